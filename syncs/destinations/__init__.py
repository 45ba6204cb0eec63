"""One module per destination kind, all shaped alike: a `Transport` with `send(rows, batch_id)`.

A new destination is written by copying an existing one and registering it in TRANSPORTS.
"""

from .base import OutRow, SendResult, TransportError  # noqa: F401


def transport_for(destination):
    from . import file, livelike, webhook

    transports = {"livelike": livelike.Transport, "webhook": webhook.Transport, "file": file.Transport}
    return transports[destination.kind](destination)
