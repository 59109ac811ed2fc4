"""Drain URLs: parsing, validation and the redacted form shown in logs and status.

Follows DESIGN section 3 ("Drain URLs"):

- ``https://[user:pass@]host[:port]/path[?query]`` and ``http://…`` — HTTP drains; the
  userinfo is percent-decoded and becomes Basic auth (a password may contain ``:``);
  ``#insecure`` on an ``https://`` URL turns certificate verification off.
- ``syslog://host[:port]`` — octet-counted syslog over TCP, default port 601.
- ``syslog+tls://host[:port][#insecure]`` — the same over TLS, default port 6514.
- ``syslog+udp://host[:port]`` — one datagram per message, default port 514.

Anything else raises ``InvalidDrainURL`` naming what is wrong and what is accepted. The
credentials of a URL never leave this module except as the Basic auth header; everything
shown to people goes through ``DrainURL.redacted()``, and no error text quotes any part of
the userinfo: a password with an unencoded ``#``, ``?`` or ``/`` (which would split the URL
before the ``@`` and make the rest of the password a port, path or fragment) is refused by
the ``@`` it leaves after the host, with a message that quotes nothing of the URL.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Final, Literal

from drains._errors import DrainError, InvalidDrainURL

__all__ = ["DrainError", "DrainKind", "DrainURL", "InvalidDrainURL", "parse_drain_url"]

DrainKind = Literal["http", "syslog", "syslog+tls", "syslog+udp"]

ACCEPTED_SCHEMES: Final = "https://, http://, syslog://, syslog+tls:// or syslog+udp://"
MAX_URL_CHARS: Final = 2048
INSECURE_FRAGMENT: Final = "insecure"
_URL_SAFE: Final = "/%:@!$&'()*+,;=-._~?"  # RFC 3986 pchar and query characters kept as they are

_DEFAULT_PORTS: Final[dict[str, int]] = {
    "https": 443,
    "http": 80,
    "syslog": 601,
    "syslog+tls": 6514,
    "syslog+udp": 514,
}
_KIND_BY_SCHEME: Final[dict[str, DrainKind]] = {
    "https": "http",
    "http": "http",
    "syslog": "syslog",
    "syslog+tls": "syslog+tls",
    "syslog+udp": "syslog+udp",
}


@dataclass(frozen=True, slots=True)
class DrainURL:
    """A validated drain URL.

    ``target`` is what an HTTP drain posts to (scheme, host, port, path and query, without
    userinfo or fragment); for syslog kinds it is ``scheme://host:port``.
    """

    scheme: str
    kind: DrainKind
    host: str
    port: int
    target: str
    username: str | None = None
    password: str | None = None
    insecure: bool = False

    @property
    def uses_tls(self) -> bool:
        return self.scheme in ("https", "syslog+tls")

    def redacted(self, *, keep_username: bool = False) -> str:
        """The URL without secrets, for logs, status and tables.

        The userinfo is removed; with ``keep_username`` (tables shown to operators) a user
        name is kept as ``user:***@`` when a password follows it, and shown as ``***@`` when
        it stands alone (``https://TOKEN@host`` carries its secret in the user name). Every
        query value is replaced by ``…`` (``?key=…``), and so is a bare query item
        (``?s3cret`` becomes ``?…``). Only the ``#insecure`` fragment is kept.
        """
        parts = urllib.parse.urlsplit(self.target)
        userinfo = ""
        if keep_username and self.username is not None:
            user = urllib.parse.quote(self.username, safe="")
            userinfo = f"{user}:***@" if self.password else "***@"
        query = ""
        if parts.query:
            shown = [
                f"{name}=…" if sep else "…"
                for name, sep, _ in (pair.partition("=") for pair in parts.query.split("&"))
            ]
            query = "?" + "&".join(shown)
        fragment = f"#{INSECURE_FRAGMENT}" if self.insecure else ""
        return f"{parts.scheme}://{userinfo}{parts.netloc}{parts.path}{query}{fragment}"

    def __repr__(self) -> str:  # never show the password in a traceback or a log line
        return f"DrainURL({self.redacted()!r})"


def _host_for_netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _after_authority(rest: str) -> str:
    """What follows the authority of ``rest`` (the URL after ``scheme://``)."""
    ends = [index for index in (rest.find(mark) for mark in "/?#") if index >= 0]
    return rest[min(ends) :] if ends else ""


def parse_drain_url(url: str) -> DrainURL:
    """Validate ``url`` and split it into the parts a drain needs.

    Raises ``InvalidDrainURL`` with a message that names the problem and the accepted forms.
    """
    if not isinstance(url, str) or not url:
        raise InvalidDrainURL(f"drain URL is empty; use {ACCEPTED_SCHEMES}")
    if len(url) > MAX_URL_CHARS:
        raise InvalidDrainURL(f"drain URL is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidDrainURL(
            "drain URL contains whitespace or control characters; percent-encode them"
        )
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise InvalidDrainURL(f"drain URL has no scheme; use {ACCEPTED_SCHEMES}")
    scheme = scheme.lower()
    if scheme not in _KIND_BY_SCHEME:
        raise InvalidDrainURL(
            f"drain URL scheme {scheme!r} is not supported; use {ACCEPTED_SCHEMES}"
        )
    after_authority = _after_authority(url.partition("://")[2])
    if "@" in after_authority:
        # A user or password with an unencoded '#', '?' or '/' splits the URL early: what
        # follows would be read as host, port, path or fragment, and echoed or stored.
        raise InvalidDrainURL(
            "drain URL has an '@' after its host: percent-encode '#', '?', '/' and '@' in a "
            "user name or password (%23, %3F, %2F, %40), and '@' in a path or query (%40)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise InvalidDrainURL(
            "drain URL cannot be split into its parts (is a '[' or ']' unbalanced?); "
            "write an IPv6 host as [2001:db8::1]"
        ) from None
    host = parts.hostname
    if not host:
        raise InvalidDrainURL(f"drain URL {scheme}://… has no host; e.g. {scheme}://host:port")
    try:
        explicit_port = parts.port
    except ValueError:
        given = parts.netloc.rpartition(":")[2]
        raise InvalidDrainURL(
            f"drain URL port {given!r} is not a number between 1 and 65535"
        ) from None
    if explicit_port == 0:
        raise InvalidDrainURL("drain URL port 0 is not valid; use a port between 1 and 65535")
    port = explicit_port if explicit_port is not None else _DEFAULT_PORTS[scheme]
    insecure = False
    if parts.fragment:
        if parts.fragment != INSECURE_FRAGMENT:
            raise InvalidDrainURL(
                f"drain URL fragment #{parts.fragment} is not understood; "
                f"the only fragment accepted is #{INSECURE_FRAGMENT} (TLS drains)"
            )
        if scheme not in ("https", "syslog+tls"):
            raise InvalidDrainURL(
                f"#{INSECURE_FRAGMENT} only applies to https:// and syslog+tls:// drains"
            )
        insecure = True

    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidDrainURL(f"drain URL host {host!r} is not a valid host name") from None
    netloc_host = _host_for_netloc(host)
    if scheme in ("https", "http"):
        username = password = None
        if parts.username is not None:
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        netloc = netloc_host if explicit_port is None else f"{netloc_host}:{explicit_port}"
        # Non-ASCII characters go on the wire percent-encoded (UTF-8), as browsers send them.
        path = urllib.parse.quote(parts.path or "/", safe=_URL_SAFE)
        query = f"?{urllib.parse.quote(parts.query, safe=_URL_SAFE)}" if parts.query else ""
        return DrainURL(
            scheme=scheme,
            kind="http",
            host=host,
            port=port,
            target=f"{scheme}://{netloc}{path}{query}",
            username=username,
            password=password,
            insecure=insecure,
        )

    if parts.username is not None:
        raise InvalidDrainURL(
            f"{scheme}:// drain URLs take no user or password; use {scheme}://host[:port]"
        )
    if parts.path not in ("", "/") or parts.query:
        raise InvalidDrainURL(
            f"{scheme}:// drain URLs take no path or query; use {scheme}://host[:port]"
        )
    return DrainURL(
        scheme=scheme,
        kind=_KIND_BY_SCHEME[scheme],
        host=host,
        port=port,
        target=f"{scheme}://{netloc_host}:{port}",
        insecure=insecure,
    )
