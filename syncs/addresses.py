"""Where outbound requests may go: the one check for every URL the sync side calls.

Credentials belong to the endpoint they were entered for, so a URL decides where a producer
token or a signing secret travels. Outside DEBUG only https goes out, and never to a loopback,
private, link-local or otherwise non-public address, unless `DESTINATION_PRIVATE_HOSTS` lists
the host (a name, an address or a CIDR); a listed host may be reached over plain http too.

`url_problem` is the check when a URL is saved (destinations, Customer.io workspaces);
`check_url` runs before every request and every redirect it follows (the HTTP session of
`destinations.base` calls it), after resolving the host, so a name that points at 127.0.0.1 is
refused as well.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

from .http import TransportError

SETTING = "DESTINATION_PRIVATE_HOSTS"


def _listed_hosts() -> tuple[set[str], list]:
    names, networks = set(), []
    for entry in settings.DESTINATION_PRIVATE_HOSTS:
        entry = str(entry).strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return names, networks


def _address(text: str):
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address


def _kind(address) -> str:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    return "not a public address"


def _is_public(address) -> bool:
    return address.is_global and not address.is_multicast


def _is_listed(host: str, address, names, networks) -> bool:
    return host in names or (address is not None and any(address in network for network in networks))


def _split(url) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an http(s) URL, or None when it is not one."""
    if not isinstance(url, str):
        return None
    try:
        parsed = urlsplit(url.strip())
        port = parsed.port
    except ValueError:
        return None
    host = (parsed.hostname or "").rstrip(".")
    if parsed.scheme not in ("http", "https") or not host:
        return None
    return parsed.scheme, host, port


def _form_problem(url) -> str | None:
    parts = _split(url)
    if parts is None:
        return f"{url!r} is not an http(s) URL"
    scheme, host, _ = parts
    if "@" in urlsplit(url.strip()).netloc:
        return f"{url!r} holds a user name or password: give credentials as credentials, never in the URL"
    if scheme == "http" and not _is_listed(host, _address(host), *_listed_hosts()) and not settings.DEBUG:
        return f"{url!r} is plain http: use https (http is only for hosts {SETTING} lists)"
    return None


def url_problem(url) -> str | None:
    """What is wrong with sending credentials to `url`, or None. No DNS look-up here: a name is
    checked, resolved, each time a request goes out."""
    if problem := _form_problem(url):
        return problem
    _, host, _ = _split(url)
    address = _address(host)
    if _is_listed(host, address, *_listed_hosts()):
        return None
    if address is not None and not _is_public(address):
        return f"{host} is {_kind(address)}: refused unless {SETTING} lists it (e.g. {SETTING}={host})"
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this machine: refused unless {SETTING} lists it (e.g. {SETTING}={host})"
    return None


def check_url(url: str) -> None:
    """Before a request: the URL's form again, then every address its host resolves to.
    Raises a permanent TransportError: sending the same request again would not help."""
    if problem := _form_problem(url):
        raise TransportError(f"refused to send: {problem}", permanent=True)
    scheme, host, port = _split(url)
    names, networks = _listed_hosts()
    if _is_listed(host, _address(host), names, networks):
        return
    try:
        resolved = socket.getaddrinfo(host, port or (443 if scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return  # the request itself fails to connect, as for any unknown host, and is retried
    for *_, sockaddr in resolved:
        address = _address(str(sockaddr[0]).split("%")[0])
        if address is not None and not _is_public(address) and not any(address in n for n in networks):
            raise TransportError(
                f"refused to send: {host} resolves to {address}, {_kind(address)}; list the host in {SETTING} to allow it",
                permanent=True,
            )
