"""What every endpoint of the HTTP API shares (DESIGN section 3).

Owns the protocols the API needs from the router (``RouterAPI``, ``TailLike``), its settings
(``ApiConfig``) and per-app state (``ApiState``), admin and ingest authentication, the rate
limit on logging refused authentication, the per-address block after too many failed
authentications (``AuthFailures``: 429 with ``Retry-After``), request-body limits and the
body deadline (408), JSON reading (415 unless ``application/json``) and the JSON error
responses (``{"error": "<reason>"}``).

Admin auth: ``Authorization: Bearer KEY`` or HTTP Basic whose password is KEY, compared in
constant time; anything else, including credentials that are not valid base64 or UTF-8, is
401 with ``WWW-Authenticate: Basic realm=Logplex``. Refusals are logged at most once per
``REFUSAL_LOG_INTERVAL_S`` with the number of refusals since the last line, so a client
hammering with a wrong key cannot fill the router's log; no credential is ever logged.
An address blocked for failing too often gets one more line per window (at most
``BLOCK_LINES_PER_INTERVAL`` such lines per interval for all addresses together).
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

from logplex.api.auth_failures import AuthFailures
from logplex.api.body_budget import BodyBudget
from logplex.api.numbers import parse_whole_number
from logplex.api.registry import SessionRegistry, SessionSpec
from logplex.codecs.records import Message
from logplex.config.records import ChannelConfig, TokenInfo
from logplex.config.store import ConfigStoreAPI
from logplex.metrics import DEADLINE_CLOSES, LIMIT_REFUSALS

log = logging.getLogger("logplex.api")

MAX_JSON_BODY_BYTES = 64 * 1024
AUTH_CHALLENGE = {"WWW-Authenticate": "Basic realm=Logplex"}
REFUSAL_LOG_INTERVAL_S = 60.0
BLOCK_LINES_PER_INTERVAL = 10  # "blocking ADDRESS" lines per interval, for all addresses
JSON_MEDIA_TYPE = "application/json"


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
    async def fetch_history(self, channel: str) -> list[Message]: ...
    async def fetch_drain_statuses(self, channel: str) -> dict[int, dict[str, object]]: ...
    async def open_view(
        self,
        channel: str,
        *,
        ps: bytes | None = None,
        source: bytes | None = None,
        tail: bool = False,
    ) -> tuple[TailLike | None, list[Message]]: ...
    def apply_channel(self, config: ChannelConfig) -> None: ...
    def remove_channel(self, name: str) -> None: ...


class SessionDirectory(Protocol):
    """Sessions shared by the routers of a cluster (``logplex.cluster.sessions.KvSessions``),
    so a session URL made by one router can be fetched on any. Both calls raise
    ``logplex.config.store.StoreUnavailable`` when the directory cannot be reached."""

    async def put(self, session_id: str, spec: SessionSpec) -> None: ...
    async def get(self, session_id: str) -> SessionSpec | None: ...


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
    # Request hygiene (docs/security.md): the time a whole request body has to arrive, the
    # POST /logs body budget, failed authentications per source address per window.
    http_body_timeout_s: float = 30.0
    max_inflating_bodies: int = 8
    max_inflate_bytes: int = 64 << 20
    auth_failure_limit: int = 20


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
    max_block_lines: int = BLOCK_LINES_PER_INTERVAL
    _next_line_at_s: float = -math.inf
    _quiet: int = 0
    _block_interval_ends_at_s: float = -math.inf
    _block_lines: int = 0
    _quiet_blocks: int = 0

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

    def blocked(self, now_s: float, address: str, failures: int, for_s: float) -> str | None:
        """The line for an address that has just been blocked, or None past
        ``max_block_lines`` in this interval. An address is blocked once per failure window,
        so each address gets at most one line per window."""
        if now_s >= self._block_interval_ends_at_s:
            self._block_interval_ends_at_s = now_s + self.interval_s
            self._block_lines = 0
        if self._block_lines >= self.max_block_lines:
            self._quiet_blocks += 1
            return None
        self._block_lines += 1
        quiet, self._quiet_blocks = self._quiet_blocks, 0
        line = (
            f"blocking authentication from {address} for {for_s:.0f} s after {failures} "
            "failures (--auth-failure-limit)"
        )
        if quiet:
            line += f" (and {quiet} more addresses blocked without a line)"
        return line


@dataclass(slots=True)
class ApiState:
    """What every handler needs, kept on ``app.state.api``."""

    store: ConfigStoreAPI
    router: RouterAPI
    config: ApiConfig
    sessions: SessionRegistry
    write_lock: trio.Lock
    auth_refusals: RefusalLog = field(default_factory=RefusalLog)
    auth_failures: AuthFailures = field(default_factory=lambda: AuthFailures(limit=20))
    body_budget: BodyBudget = field(default_factory=BodyBudget)
    # Cluster mode: where sessions are shared with the other routers; None on a single node.
    session_directory: SessionDirectory | None = None


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


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown client"


def refuse_if_blocked(request: Request) -> None:
    """ApiError 429 while the client's address has too many failed authentications in its
    window (``AuthFailures``), before any credential is looked at."""
    state = api_state(request)
    blocked_for_s = state.auth_failures.blocked_for_s(client_address(request), trio.current_time())
    if blocked_for_s is None:
        return
    LIMIT_REFUSALS.labels(limit="auth_failure_limit").inc()
    retry_after_s = max(1, math.ceil(blocked_for_s))
    raise ApiError(
        429,
        f"too many failed authentications from this address (--auth-failure-limit "
        f"{state.auth_failures.limit} per {state.auth_failures.window_s:.0f} s); "
        f"retry in {retry_after_s} s with the right credentials",
        headers={"Retry-After": str(retry_after_s)},
    )


def log_refused_auth(request: Request, what: str) -> None:
    """Count one refused authentication against the client's address and log it,
    rate-limited (see ``RefusalLog``)."""
    state = api_state(request)
    client = client_address(request)
    now_s = trio.current_time()
    line = state.auth_refusals.refused(
        now_s, f"{what}: {request.method} {request.url.path} from {client}"
    )
    if line is not None:
        log.warning("%s", line)
    failures = state.auth_failures
    if failures.failed(client, now_s):
        line = state.auth_refusals.blocked(now_s, client, failures.limit, failures.window_s)
        if line is not None:
            log.warning("%s", line)


def require_admin(request: Request) -> None:
    refuse_if_blocked(request)
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

    The whole body must arrive within ``ApiConfig.http_body_timeout_s`` of the start of the
    read; past it the answer is 408 with ``Connection: close`` (a slowloris body holds a
    connection that long at most), counted in ``logplex_deadline_closes_total``. A client
    that goes away before the end of its body gets one short log line and an ApiError (its
    answer goes nowhere), not a traceback.
    """
    declared = parse_whole_number(request.headers.get("content-length", ""))
    if declared is not None and declared > max_bytes:
        raise ApiError(413, f"{what} is {declared} bytes; the limit is {max_bytes}")
    timeout_s = api_state(request).config.http_body_timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        with trio.move_on_after(timeout_s) as deadline:
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
    if deadline.cancelled_caught:
        DEADLINE_CLOSES.labels(listener="http", deadline="body").inc()
        raise ApiError(
            408,
            f"{what} did not arrive within {timeout_s:g} s (--http-body-timeout; "
            f"{size} bytes came); send the whole body at once",
            headers={"Connection": "close"},
        )
    return b"".join(chunks)


def json_content_type_problem(content_type: str | None) -> str | None:
    """Why a request with this Content-Type may not carry a JSON body, or None when it may:
    ``application/json``, parameters allowed, a charset only if it is UTF-8 (RFC 8259 8.1)."""
    if content_type is None:
        return f"the body has no Content-Type; send Content-Type: {JSON_MEDIA_TYPE}"
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        shown = media_type if len(media_type) <= 60 else media_type[:60] + "…"
        return f"Content-Type {shown!r} is not JSON; send Content-Type: {JSON_MEDIA_TYPE}"
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            shown = charset if len(charset) <= 40 else charset[:40] + "…"
            return f"charset {shown!r} is not supported; send UTF-8 JSON as {JSON_MEDIA_TYPE}"
    return None


async def read_json_object(request: Request) -> dict[str, object]:
    """The JSON object of the body; an empty body (as clients send for "no options") is
    ``{}`` whatever its Content-Type, any other body must be ``application/json`` (415)."""
    problem = json_content_type_problem(request.headers.get("content-type"))
    if problem is not None and request.headers.get("content-length", "").strip() not in ("", "0"):
        raise ApiError(415, problem)
    body = await read_body_limited(request, MAX_JSON_BODY_BYTES, "the JSON body")
    if not body.strip():
        return {}
    if problem is not None:
        raise ApiError(415, problem)
    try:
        value = json.loads(body)
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
