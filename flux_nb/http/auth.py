"""The API key: held so that nothing prints it, and sent only where it belongs.

``Secret`` wraps the key: its repr and str are masked, so a traceback that shows local
variables (IPython's ``%xmode Verbose``) or a logged object never reveals it. ``ApiKey``
attaches it as ``x-key`` only to the API's own origin (scheme, host and port), to BFL's
regional hosts over https when the API is BFL's, and never over plain http beyond loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Generator

import httpx

from flux_nb.errors import ValidationError
from flux_nb.protocol import KEY_HEADER, is_bfl_hostname

DEFAULT_PORTS = {"http": 80, "https": 443}


class Secret:
    """A string that never shows itself: ``repr``/``str`` are masked, ``reveal()`` gives the value.

    >>> Secret("abc")
    Secret(***)
    >>> Secret("abc").reveal()
    'abc'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def of(cls, value: str | Secret | None) -> Secret | None:
        """Wrap a plain key (an empty one counts as none); a Secret or None is returned as is."""
        if value is None or isinstance(value, Secret):
            return value or None
        return cls(value) if value else None

    def header_safe(self) -> bool:
        """True when the value can travel in an HTTP header: printable ASCII, no spaces."""
        value = self.reveal()
        return value.isascii() and value.isprintable() and " " not in value

    def reveal(self) -> str:
        """The key itself: only for the header that carries it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type, tuple[str]]:
        raise TypeError("a Secret is not pickled")


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port (default ports filled in): what must match for the key to be sent."""
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or DEFAULT_PORTS.get(scheme)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiKey(httpx.Auth):
    """Adds the ``x-key`` header where the key belongs; holds it as a ``Secret``.

    A polling URL on another origin (another host, or the same host on another port) gets no key,
    unless both are BFL hosts over https on its usual port (regional polling hosts). Plain http carries the key
    to loopback only.
    """

    def __init__(self, key: str | Secret | None, base_url: str = "") -> None:
        self._key = Secret.of(key)
        if self._key and not self._key.header_safe():
            raise ValidationError(
                "api_key holds characters an HTTP header cannot carry (spaces, line breaks or non-ASCII); "
                "copy the key again"
            )
        self._origin = origin(httpx.URL(base_url)) if base_url else ("", "", None)

    def sends_to(self, url: httpx.URL | str) -> bool:
        """True when a request to ``url`` carries the key."""
        scheme, host, port = origin(httpx.URL(url))
        if scheme == "http" and not is_loopback(host):
            return False
        if (scheme, host, port) == self._origin:
            return True
        api_scheme, api_host, _ = self._origin
        regional = scheme == api_scheme == "https" and port == DEFAULT_PORTS["https"]
        return regional and is_bfl_hostname(host) and is_bfl_hostname(api_host)

    def scrub(self, text: str) -> str:
        """``text`` with the key masked: for answers that echo what they were sent."""
        return text.replace(self._key.reveal(), "***") if self._key else text

    def __repr__(self) -> str:
        return "ApiKey(***)" if self._key else "ApiKey(None)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._key and self.sends_to(request.url):
            request.headers[KEY_HEADER] = self._key.reveal()
        yield request
