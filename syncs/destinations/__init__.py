"""One package per destination kind, all shaped alike (`<kind>/__init__.py` exports its
`SPEC`; `<kind>/transport.py` holds a `Transport` with `send(rows, batch_id, sync)`), named in
one table, `registry.KINDS`. A new destination is written by copying an existing folder and
adding one line there."""

from ..http import TransportError  # noqa: F401
from .base import OutRow, SendResult  # noqa: F401
from .registry import KINDS, kind_choices, register, spec_for, transport_for  # noqa: F401
