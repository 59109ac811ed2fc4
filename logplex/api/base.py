"""What every endpoint of the HTTP API shares (DESIGN section 3).

Owns the protocols the API needs from the router (``RouterAPI``, ``TailLike``), its settings
(``ApiConfig``) and per-app state (``ApiState``), admin and ingest authentication, the rate
limit on logging refused authentication, request-body limits, JSON reading and the JSON
error responses (``{"error": "<reason>"}``).

Admin auth: ``Authorization: Bearer KEY`` or HTTP Basic whose password is KEY, compared in
constant time; anything else, including credentials that are not valid base64 or UTF-8, is
401 with ``WWW-Authenticate: Basic realm=Logplex``. Refusals are logged at most once per
``REFUSAL_LOG_INTERVAL_S`` with the number of refusals since the last line, so a client
hammering with a wrong key cannot fill the router's log; no credential is ever logged.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import math
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import trio
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from logplex.api.numbers import parse_whole_number
from logplex.api.registry import SessionRegistry
from logplex.codecs.records import Message
from logplex.config.records import ChannelConfig, TokenInfo
from logplex.config.store import ConfigStore

log = logging.getLogger("logplex.api")

MAX_JSON_BODY_BYTES = 64 * 1024
AUTH_CHALLENGE = {"WWW-Authenticate": "Basic realm=Logplex"}
REFUSAL_LOG_INTERVAL_S = 60.0


class TailLike(Protocol):
    async def receive(self) -> list[Message]: ...
    def close(self) -> None: ...


class RouterAPI(Protocol):
    """The part of ``logplex.fanout.router.Router`` the API uses (docs/architecture.md)."""

    def lookup_token(self, token: str) -> TokenInfo | None: ...
    def publish(self, channel: str, messages: list[Message]) -> int: ...
    async def wait_durable(self) -> None: ...
    def spool_status(self) -> dict[str, object] | None: ...
    def has_channel(self, channel: str) -> bool: ...
    def history(self, channel: str) -> list[Message]: ...
    def open_tail(
        self, channel: str, *, ps: bytes | None = None, source: bytes | None = None
    ) -> TailLike: ...
    def drain_statuses(self, channel: str) -> dict[int, dict[str, object]]: ...
    def apply_channel(self, config: ChannelConfig) -> None: ...
    def remove_channel(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ApiConfig:
    auth_key: str
    public_url: str  # base of session URLs, no trailing slash
    max_drains_per_channel: int = 6
    validate_drain_url: Callable[[str], None] | None = None  # raises ValueError saying why
    deny_private_drains: bool = False  # --deny-private-drains (logplex.api.drain_targets)
    # The router's own bound listeners as (name, ``HOST:PORT`` or ``[V6]:PORT``), name being
    # http, shim or syslog: drain URLs that reach one of them are refused.
    listen_addresses: tuple[tuple[str, str], ...] = ()
    # Limits on what the key holder may create or hold (docs/operations.md, "Guards: limits").
    max_channels: int = 10_000
    max_tokens_per_channel: int = 20
    max_sessions_per_channel: int = 50
    max_clients_per_session: int = 4


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(slots=True)
class RefusalLog:
    """At most one log line per ``interval_s`` about refused authentication.

    ``refused(now_s, what)`` returns the line to log now, or None while the interval since the
    last line has not passed; the next line counts the refusals that were kept quiet.
    """

    interval_s: float = REFUSAL_LOG_INTERVAL_S
    _next_line_at_s: float = -math.inf
    _quiet: int = 0

    def refused(self, now_s: float, what: str) -> str | None:
        if now_s < self._next_line_at_s:
            self._quiet += 1
            return None
        quiet, self._quiet = self._quiet, 0
        self._next_line_at_s = now_s + self.interval_s
        line = f"refused {what}"
        if quiet:
            line += f" (and {quiet} more refusals since the last such line)"
        return line


@dataclass(slots=True)
class ApiState:
    """What every handler needs, kept on ``app.state.api``."""

    store: ConfigStore
    router: RouterAPI
    config: ApiConfig
    sessions: SessionRegistry
    write_lock: trio.Lock
    auth_refusals: RefusalLog = field(default_factory=RefusalLog)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


# -- authentication ------------------------------------------------------------------------


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, param = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        # Header values arrive as latin-1 text: a non-ASCII byte makes b64decode raise a
        # plain ValueError (binascii.Error is one too), invalid UTF-8 a UnicodeDecodeError.
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def presented_admin_key(header: str | None) -> str | None:
    """The key in ``Authorization: Bearer KEY`` or in Basic's password, else None."""
    if not header:
        return None
    scheme, _, param = header.partition(" ")
    if scheme.lower() == "bearer":
        return param.strip() or None
    credentials = _basic_credentials(header)
    return credentials[1] if credentials is not None else None


def basic_token(header: str | None) -> str | None:
    """The password of ``Authorization: Basic token:t.…`` (Logplex's ingest auth)."""
    credentials = _basic_credentials(header or "")
    if credentials is None or credentials[0] != "token":
        return None
    return credentials[1]


def log_refused_auth(request: Request, what: str) -> None:
    """Log one refused authentication, rate-limited (see ``RefusalLog``)."""
    client = request.client.host if request.client is not None else "unknown client"
    line = api_state(request).auth_refusals.refused(
        trio.current_time(), f"{what}: {request.method} {request.url.path} from {client}"
    )
    if line is not None:
        log.warning("%s", line)


def require_admin(request: Request) -> None:
    presented = presented_admin_key(request.headers.get("authorization"))
    expected = api_state(request).config.auth_key.encode("utf-8")
    if presented is None or not hmac.compare_digest(presented.encode("utf-8"), expected):
        log_refused_auth(request, "a missing or wrong API key")
        raise ApiError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer KEY' or Basic auth "
            "with the key as password",
            headers=AUTH_CHALLENGE,
        )


# -- request bodies ------------------------------------------------------------------------


async def read_body_limited(request: Request, max_bytes: int, what: str) -> bytes:
    """The request body, or ApiError 413 as soon as it passes ``max_bytes``.

    A client that goes away before the end of its body gets one short log line and an
    ApiError (its answer goes nowhere), not a traceback.
    """
    declared = parse_whole_number(request.headers.get("content-length", ""))
    if declared is not None and declared > max_bytes:
        raise ApiError(413, f"{what} is {declared} bytes; the limit is {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, f"{what} is larger than the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        log.info(
            "%s %s: the client went away after %d bytes of the body; request dropped",
            request.method,
            request.url.path,
            size,
        )
        raise ApiError(400, f"the client closed the connection inside {what}") from None
    return b"".join(chunks)


async def read_json_object(request: Request) -> dict[str, object]:
    body = await read_body_limited(request, MAX_JSON_BODY_BYTES, "the JSON body")
    try:
        value = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "the body is JSON nested too deeply to be a request") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


# -- error responses -----------------------------------------------------------------------


async def api_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def http_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: f"no such endpoint: {request.method} {request.url.path}",
        405: f"method {request.method} is not allowed on {request.url.path}",
    }
    return error_response(
        exc.status_code, messages.get(exc.status_code, str(exc.detail)), exc.headers
    )


async def internal_error_response(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal error; the router's log has the details")
