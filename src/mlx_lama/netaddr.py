"""Host names and addresses: which ones mean "this machine only".

Shared by the manifest checks (a non-loopback ``[server] host`` needs an
``api_key``; an external ``url`` must not loop back to the gateway), ``ps``
(an external server's port) and the gateway's DNS-rebinding defence, so all
agree on what loopback is and which port a URL means. Pure.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_ascii_number(text: str) -> bool:
    # str.isdigit alone accepts "²", which latin-1 header decoding can produce.
    return text.isascii() and text.isdigit()


def _split_host(host: str) -> str | None:
    """The host part of ``host[:port]`` / ``[v6][:port]`` / bare IPv6; None if malformed."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and is_ascii_number(rest[1:])):
            return None
        return host[1:end]
    if host.count(":") > 1:
        return host  # bare IPv6, as in a bind address: no port possible
    name, sep, port = host.partition(":")
    if sep and not is_ascii_number(port):
        return None
    return name


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``127.x.x.x`` or ``::1``, with or without a port.

    Takes a Host header value (``localhost:11434``, ``[::1]:11434``) or a bind
    address (``127.0.0.1``, ``::1``); case-insensitive. Pure.
    """
    name = _split_host(host.strip().lower())
    if not name:
        return False
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def url_port(url: str) -> int:
    """The TCP port ``url`` connects to (80/443 when it names none). Pure."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def parse_listen_address(text: str, default_host: str, default_port: int) -> tuple[str, int]:
    """``MLX_LAMA_HOST`` in the forms ``OLLAMA_HOST`` takes, as (host, port). Pure.

    ``host``, ``host:port``, ``:port`` (every interface, as Ollama reads it),
    ``[v6]:port``, a bare IPv6 address, and any of these after ``http://`` or
    ``https://`` (whose default ports are then 80 and 443, as in Ollama). An
    empty text gives the defaults. Raises ValueError for a port that is not a
    number from 0 to 65535.
    """
    text = text.strip()
    if not text:
        return default_host, default_port
    port = default_port
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme not in ("http", "https"):
            raise ValueError(f"{text!r}: only http:// and https:// addresses can be listened on")
        port = 80 if scheme == "http" else 443
        text = rest
    text = text.split("/", 1)[0]
    host = text
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unclosed '[' in an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            raise ValueError(f"{text!r}: expected ':port' after the IPv6 address")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        host = host or "0.0.0.0"
    if port_text is not None:
        if not is_ascii_number(port_text) or int(port_text) > 65535:
            raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
        port = int(port_text)
    return host or default_host, port
