"""Where `pgexport serve` listens, which Host headers it answers, and what it tells the user about both.

DNS rebinding: a web page can make its own host name resolve to 127.0.0.1 once it has loaded, and the browser then
treats this server as that page's origin, free to read the manifest and every file the page can name. The
browser still sends the page's name in the Host header, so the server answers only the names it is reachable
under: on a loopback address `localhost`, `127.0.0.1` and `[::1]`, on a given address or name that one, each with
the port (a bare name only on port 80, where browsers leave the port out). On every interface (`--host ""`,
`0.0.0.0`, `::`) it also answers any IP address, which no rebinding can produce, and this machine's host name.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Binding:
    host: str  # as the user gave it (--host)
    address: str  # the address the socket is bound to (server_address[0])
    port: int

    @property
    def scope(self) -> str:
        """'loopback' (this machine only), 'everywhere' (every interface) or 'network' (one outside address)."""
        ip = ipaddress.ip_address(self.address.split("%")[0])  # an IPv6 scope id (fe80::1%eth0) is not part of it
        if ip.is_unspecified:
            return "everywhere"
        return "loopback" if ip.is_loopback else "network"

    def names(self) -> set[str]:
        """The host names (lower case, IPv6 in brackets) a request may carry, without the port."""
        names = {_literal(self.address)}
        if self.host and self.host.strip("[]") != self.address:
            names.add(_literal(self.host.strip("[]")).lower())
        if self.scope != "network":
            names |= set(LOOPBACK_NAMES)
        if self.scope == "everywhere":
            names.add(socket.gethostname().lower())
        return names

    def accepts(self, header: str | None) -> bool:
        """Whether a request with this Host header (None: none) is for this server."""
        name, port = _split(header or "")
        if not name or port != str(self.port):
            return False
        return name in self.names() or (self.scope == "everywhere" and _is_ip(name))

    def url(self) -> str:
        """A URL that reaches the server from this machine."""
        if self.scope == "everywhere":
            host = "[::1]" if ":" in self.address else "127.0.0.1"
        elif self.host and not _is_ip(self.host.strip("[]")):
            host = self.host  # the name the user chose (localhost, a host name)
        else:
            host = _literal(self.address)
        return f"http://{host}:{self.port}/"

    def warning(self) -> str | None:
        """One line when the server is reachable from beyond this machine; None on loopback."""
        if self.scope == "loopback":
            return None
        where = ("every network interface" if self.scope == "everywhere"
                 else f"{_literal(self.address)}, an address other machines can reach")
        return (f"warning: listening on {where}: anyone who can reach this machine on port {self.port} can load the "
                f"page and the bundle (--host 127.0.0.1 serves this machine only)")


def family(host: str) -> socket.AddressFamily:
    """IPv6 for an IPv6 address (`::1`, `::`), IPv4 otherwise (names resolve to their IPv4 address)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _split(header: str) -> tuple[str, str]:
    """'LocalHost:8000' -> ('localhost', '8000'); '[::1]' -> ('[::1]', '80'); ('', '') when it is no host."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 address: its colons are not the port's
        end = header.find("]") + 1
        rest = header[end:] if end else "?"
        if rest and not rest.startswith(":"):
            return "", ""
        return header[:end], rest[1:] if rest else "80"
    name, sep, port = header.partition(":")
    return name, port if sep else "80"


def _literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
