"""The router's HTTP API: a Starlette app served by hypercorn's trio worker.

DESIGN section 3, Logplex v3 compatible. This module owns the app, admin authentication,
JSON error bodies, request-size limits and the config endpoints (channels, tokens, drains),
plus ``/healthcheck`` and ``/metrics``. Sessions and tails live in ``api_sessions``, log
ingest (``POST /logs``) and ``GET /v3/channels/{ch}/logs`` in ``api_logs``.

Every config write is ``store write -> router.apply_channel`` (or ``remove_channel``) under
one lock, so the router applies changes in the order the store made them and a change takes
effect before the response is sent.

Admin auth: ``Authorization: Bearer KEY`` or HTTP Basic whose password is KEY, compared in
constant time; anything else is 401 with ``WWW-Authenticate: Basic realm=Logplex``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from logplex.api.registry import SessionRegistry
from logplex.codecs.records import Message
from logplex.config.records import ChannelConfig, TokenInfo
from logplex.config.store import (
    ChannelNotFound,
    ConfigStore,
    DrainNotFound,
    DuplicateDrainURL,
    InvalidName,
    TooManyDrains,
)
from logplex.fanout.router import pending_drain_status

MAX_JSON_BODY_BYTES = 64 * 1024
AUTH_CHALLENGE = {"WWW-Authenticate": "Basic realm=Logplex"}


class TailLike(Protocol):
    async def receive(self) -> list[Message]: ...
    def close(self) -> None: ...


class RouterAPI(Protocol):
    """The part of ``logplex.fanout.router.Router`` the API uses (docs/architecture.md)."""

    def lookup_token(self, token: str) -> TokenInfo | None: ...
    def publish(self, channel: str, messages: list[Message]) -> None: ...
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


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(slots=True)
class ApiState:
    """What every handler needs, kept on ``app.state.api``."""

    store: ConfigStore
    router: RouterAPI
    config: ApiConfig
    sessions: SessionRegistry
    write_lock: trio.Lock


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, param = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
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


def require_admin(request: Request) -> None:
    presented = presented_admin_key(request.headers.get("authorization"))
    expected = api_state(request).config.auth_key.encode("utf-8")
    if presented is None or not hmac.compare_digest(presented.encode("utf-8"), expected):
        raise ApiError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer KEY' or Basic auth "
            "with the key as password",
            headers=AUTH_CHALLENGE,
        )


async def read_body_limited(request: Request, max_bytes: int, what: str) -> bytes:
    """The request body, or ApiError 413 as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"{what} is {declared} bytes; the limit is {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"{what} is larger than the limit of {max_bytes} bytes")
            chunks.append(chunk)
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


def _url_field(body: dict[str, object], config: ApiConfig) -> str:
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise ApiError(400, 'the body must carry the drain URL: {"url": "syslog+tls://host:port"}')
    if config.validate_drain_url is not None:
        try:
            config.validate_drain_url(url)
        except ValueError as error:
            raise ApiError(400, str(error)) from None
    return url


def _drain_id(request: Request) -> int:
    raw = request.path_params["drain_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, f"no drain with id {raw!r}: drain ids are integers")
    return int(raw)


# -- channels ----------------------------------------------------------------------------


async def put_channel(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    name: str = request.path_params["channel"]
    body = await read_json_object(request)
    tokens = body.get("tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ApiError(400, 'tokens must be a list of token names, like {"tokens": ["app"]}')
    async with state.write_lock:
        try:
            config, created = await state.store.put_channel(name, tokens)
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        state.router.apply_channel(config)
    return JSONResponse(config.to_json(), status_code=201 if created else 200)


async def _existing_channel(state: ApiState, name: str) -> ChannelConfig:
    config = await state.store.get_channel(name)
    if config is None:
        raise ApiError(404, f"channel {name!r} not found")
    return config


async def get_channel(request: Request) -> Response:
    require_admin(request)
    config = await _existing_channel(api_state(request), request.path_params["channel"])
    return JSONResponse(config.to_json())


async def list_channels(request: Request) -> Response:
    require_admin(request)
    return JSONResponse(await api_state(request).store.list_channel_names())


async def delete_channel(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    name: str = request.path_params["channel"]
    async with state.write_lock:
        try:
            await state.store.delete_channel(name)
        except ChannelNotFound as error:
            raise ApiError(404, str(error)) from None
        state.router.remove_channel(name)
        state.sessions.forget_channel(name)
    return Response(status_code=204)


async def add_token(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    channel: str = request.path_params["channel"]
    body = await read_json_object(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, 'the body must name the token: {"name": "app"}')
    async with state.write_lock:
        try:
            config, token, created = await state.store.add_token(channel, name)
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        except ChannelNotFound as error:
            raise ApiError(404, str(error)) from None
        if created:
            state.router.apply_channel(config)
    return JSONResponse({"name": name, "token": token}, status_code=201 if created else 200)


# -- drains --------------------------------------------------------------------------------


async def add_drain(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    channel: str = request.path_params["channel"]
    body = await read_json_object(request)
    url = _url_field(body, state.config)
    async with state.write_lock:
        try:
            config, drain = await state.store.add_drain(
                channel, url, max_drains=state.config.max_drains_per_channel
            )
        except ChannelNotFound as error:
            raise ApiError(404, str(error)) from None
        except DuplicateDrainURL as error:
            raise ApiError(409, str(error)) from None
        except TooManyDrains as error:
            raise ApiError(422, str(error)) from None
        state.router.apply_channel(config)
    location = f"{state.config.public_url}/v3/channels/{channel}/drains/{drain.id}"
    return JSONResponse(drain.to_json(), status_code=201, headers={"Location": location})


async def update_drain(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    channel: str = request.path_params["channel"]
    drain_id = _drain_id(request)
    body = await read_json_object(request)
    url = _url_field(body, state.config)
    async with state.write_lock:
        try:
            config, drain = await state.store.update_drain(channel, drain_id, url)
        except (ChannelNotFound, DrainNotFound) as error:
            raise ApiError(404, str(error)) from None
        except DuplicateDrainURL as error:
            raise ApiError(409, str(error)) from None
        state.router.apply_channel(config)
    return JSONResponse(drain.to_json())


async def delete_drain(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    channel: str = request.path_params["channel"]
    drain_id = _drain_id(request)
    async with state.write_lock:
        try:
            config = await state.store.remove_drain(channel, drain_id)
        except (ChannelNotFound, DrainNotFound) as error:
            raise ApiError(404, str(error)) from None
        state.router.apply_channel(config)
    return Response(status_code=204)


async def list_drains(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    config = await _existing_channel(state, request.path_params["channel"])
    statuses = state.router.drain_statuses(config.name)
    return JSONResponse(
        [
            {**drain.to_json(), "status": statuses.get(drain.id) or pending_drain_status()}
            for drain in config.drains
        ]
    )


# -- operations ----------------------------------------------------------------------------


async def healthcheck(request: Request) -> Response:
    if not getattr(request.app.state, "ready", False):
        return error_response(503, "starting: the router is not ready yet")
    return PlainTextResponse("OK")


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# -- the app -------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: f"no such endpoint: {request.method} {request.url.path}",
        405: f"method {request.method} is not allowed on {request.url.path}",
    }
    return error_response(
        exc.status_code, messages.get(exc.status_code, str(exc.detail)), exc.headers
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal error; the router's log has the details")


Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(*, store: ConfigStore, router: RouterAPI, config: ApiConfig) -> Starlette:
    """The API app; ``app.state.ready`` starts False (``/healthcheck`` answers 503)."""
    from logplex.api.logs import channel_logs, post_logs
    from logplex.api.sessions import create_session, stream_session

    routes = [
        Route("/healthcheck", healthcheck, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v3/channels", list_channels, methods=["GET"]),
        Route("/v3/channels/{channel}", put_channel, methods=["PUT"]),
        Route("/v3/channels/{channel}", get_channel, methods=["GET"]),
        Route("/v3/channels/{channel}", delete_channel, methods=["DELETE"]),
        Route("/v3/channels/{channel}/tokens", add_token, methods=["POST"]),
        Route("/v3/channels/{channel}/drains", add_drain, methods=["POST"]),
        Route("/v3/channels/{channel}/drains", list_drains, methods=["GET"]),
        Route("/v3/channels/{channel}/drains/{drain_id}", update_drain, methods=["PUT"]),
        Route("/v3/channels/{channel}/drains/{drain_id}", delete_drain, methods=["DELETE"]),
        Route("/v3/channels/{channel}/logs", channel_logs, methods=["GET"]),
        Route("/v3/sessions", create_session, methods=["POST"]),
        Route("/sessions/{session_id}", stream_session, methods=["GET"]),
        Route("/logs", post_logs, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.api = ApiState(
        store=store,
        router=router,
        config=config,
        sessions=SessionRegistry(),
        write_lock=trio.Lock(),
    )
    app.state.ready = False
    return app
