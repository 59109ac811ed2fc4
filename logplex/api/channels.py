"""Config endpoints of the HTTP API: channels, tokens and drains (DESIGN section 3).

Every config write is ``store write -> router.apply_channel`` (or ``remove_channel``) under
one lock, so the router applies changes in the order the store made them and a change takes
effect before the response is sent. A store that applies configs itself
(``ConfigStoreAPI.applies_itself``: the cluster's KV store, whose watcher applies every
revision in order and whose writes return once this router has applied them) is left to do
so; a store that cannot be reached answers 503 with ``Retry-After``.

A drain URL is checked before it is stored: by the drains package's validator (scheme, host,
port) and by ``logplex.api.drain_targets`` (it must not lead back into this router's own
listeners, nor, with ``--deny-private-drains``, reach a private destination).

Limits on what the key holder may create (docs/operations.md, "Guards: limits"): at most
``--max-channels`` channels, ``--max-tokens-per-channel`` tokens per channel and
``--max-drains-per-channel`` drains per channel. Past one, the write is refused with 422 (the
request is well-formed, the stored state does not allow it; retrying will not help until
something is deleted), the error names the limit and its flag, and
``logplex_limit_refusals_total{limit=...}`` counts it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from logplex import metrics
from logplex.api.base import (
    ApiConfig,
    ApiError,
    ApiState,
    api_state,
    read_json_object,
    require_admin,
)
from logplex.api.drain_targets import drain_destination_refusal, parse_listener
from logplex.api.numbers import parse_whole_number
from logplex.config.records import ChannelConfig
from logplex.config.store import (
    ChannelNotFound,
    DrainNotFound,
    DuplicateDrainURL,
    InvalidName,
    StoreUnavailable,
    TooManyChannels,
    TooManyDrains,
    TooManyTokens,
)
from logplex.fanout.router import pending_drain_status

MAX_DRAIN_ID_DIGITS = 18  # ids are SQLite integers: 18 digits always fit in 63 bits


STORE_RETRY_AFTER_S = 1  # what a 503 of an unreachable shared store asks the client to wait


def _unavailable(error: StoreUnavailable) -> ApiError:
    return ApiError(503, str(error), headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


def _apply(state: ApiState, config: ChannelConfig) -> None:
    if not state.store.applies_itself:
        state.router.apply_channel(config)


def _limit_refused(limit: str, error: Exception) -> ApiError:
    """The 422 of a create-limit; counted under the limit's setting name."""
    metrics.LIMIT_REFUSALS.labels(limit=limit).inc()
    return ApiError(422, str(error))


async def _drain_url_field(body: dict[str, object], config: ApiConfig) -> str:
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise ApiError(400, 'the body must carry the drain URL: {"url": "syslog+tls://host:port"}')
    if config.validate_drain_url is not None:
        try:
            config.validate_drain_url(url)
        except ValueError as error:
            raise ApiError(400, str(error)) from None
    listeners = [parse_listener(name, address) for name, address in config.listen_addresses]
    refusal = await drain_destination_refusal(
        url, listeners, deny_private=config.deny_private_drains
    )
    if refusal is not None:
        raise ApiError(400, refusal)
    return url


def _drain_id(request: Request) -> int:
    raw = request.path_params["drain_id"]
    drain_id = parse_whole_number(raw, max_digits=MAX_DRAIN_ID_DIGITS)
    if drain_id is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise ApiError(404, f"no drain with id {shown!r}: drain ids are integers")
    return drain_id


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
            config, created = await state.store.put_channel(
                name,
                tokens,
                max_channels=state.config.max_channels,
                max_tokens=state.config.max_tokens_per_channel,
            )
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        except TooManyChannels as error:
            raise _limit_refused("max_channels", error) from None
        except TooManyTokens as error:
            raise _limit_refused("max_tokens_per_channel", error) from None
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        _apply(state, config)
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
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        if not state.store.applies_itself:
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
            config, token, created = await state.store.add_token(
                channel, name, max_tokens=state.config.max_tokens_per_channel
            )
        except InvalidName as error:
            raise ApiError(400, str(error)) from None
        except TooManyTokens as error:
            raise _limit_refused("max_tokens_per_channel", error) from None
        except ChannelNotFound as error:
            raise ApiError(404, str(error)) from None
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        if created:
            _apply(state, config)
    return JSONResponse({"name": name, "token": token}, status_code=201 if created else 200)


# -- drains --------------------------------------------------------------------------------


async def add_drain(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    channel: str = request.path_params["channel"]
    body = await read_json_object(request)
    url = await _drain_url_field(body, state.config)
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
            raise _limit_refused("max_drains_per_channel", error) from None
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        _apply(state, config)
    location = f"{state.config.public_url}/v3/channels/{channel}/drains/{drain.id}"
    return JSONResponse(drain.to_json(), status_code=201, headers={"Location": location})


async def update_drain(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    channel: str = request.path_params["channel"]
    drain_id = _drain_id(request)
    body = await read_json_object(request)
    url = await _drain_url_field(body, state.config)
    async with state.write_lock:
        try:
            config, drain = await state.store.update_drain(channel, drain_id, url)
        except (ChannelNotFound, DrainNotFound) as error:
            raise ApiError(404, str(error)) from None
        except DuplicateDrainURL as error:
            raise ApiError(409, str(error)) from None
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        _apply(state, config)
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
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        _apply(state, config)
    return Response(status_code=204)


async def list_drains(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    config = await _existing_channel(state, request.path_params["channel"])
    statuses = await state.router.fetch_drain_statuses(config.name)
    return JSONResponse(
        [
            {**drain.to_json(), "status": statuses.get(drain.id) or pending_drain_status()}
            for drain in config.drains
        ]
    )
