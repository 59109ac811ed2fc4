"""The router's HTTP API app: a Starlette app served by hypercorn's trio worker.

DESIGN section 3, Logplex v3 compatible. This module owns the app factory, which routes every
endpoint (config endpoints in ``logplex.api.channels``, log ingest and history reads in
``logplex.api.logs``, sessions in ``logplex.api.sessions``), plus ``/healthcheck`` and
``/metrics``. What the endpoints share (auth, limits, errors, state) is ``logplex.api.base``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from logplex.api.auth_failures import AuthFailures
from logplex.api.base import (
    ApiConfig,
    ApiError,
    ApiState,
    RouterAPI,
    SessionDirectory,
    api_error_response,
    api_state,
    error_response,
    http_error_response,
    internal_error_response,
    require_admin,
)
from logplex.api.body_budget import BodyBudget
from logplex.api.channels import (
    add_drain,
    add_token,
    delete_channel,
    delete_drain,
    get_channel,
    list_channels,
    list_drains,
    put_channel,
    update_drain,
)
from logplex.api.logs import channel_logs, post_logs
from logplex.api.registry import SessionRegistry
from logplex.api.sessions import create_session, stream_session
from logplex.config.store import ConfigStoreAPI

__all__ = ["ApiConfig", "create_app"]


async def healthcheck(request: Request) -> Response:
    """``OK`` while the router serves; ``Logplex-Spool`` says whether acknowledgements mean
    durable (``durable``), memory after a disk error (``memory``) or ``off``."""
    if not getattr(request.app.state, "ready", False):
        return error_response(503, "starting: the router is not ready yet")
    cluster_health = getattr(request.app.state, "cluster_health", None)
    if cluster_health is not None and not cluster_health():
        return error_response(503, "cluster: NATS (a JetStream quorum) is not reachable")
    spool = api_state(request).router.spool_status()
    mode = "off" if spool is None else str(spool["mode"])
    return PlainTextResponse("OK", headers={"Logplex-Spool": mode})


async def spool_health(request: Request) -> Response:
    """``/healthcheck/spool``: the spool's mode, size, age and last disk error, as JSON."""
    spool = api_state(request).router.spool_status()
    if spool is None:
        return JSONResponse({"mode": "off"})
    return JSONResponse(spool)


async def cluster_view(request: Request) -> Response:
    """``GET /v3/cluster``: members, partitions per member, lease ages, consumer lag."""
    require_admin(request)
    status = getattr(request.app.state, "cluster_status", None)
    if status is None:
        raise ApiError(404, "not a cluster: this router runs without --nats")
    return JSONResponse(await status())


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    *,
    store: ConfigStoreAPI,
    router: RouterAPI,
    config: ApiConfig,
    session_directory: SessionDirectory | None = None,
    cluster_status: Callable[[], Awaitable[dict[str, object]]] | None = None,
    cluster_health: Callable[[], bool] | None = None,
) -> Starlette:
    """The API app; ``app.state.ready`` starts False (``/healthcheck`` answers 503).

    In the cluster mode ``session_directory`` shares sessions with the other routers,
    ``cluster_status`` answers ``GET /v3/cluster`` and ``cluster_health`` gates
    ``/healthcheck``."""
    routes = [
        Route("/healthcheck", healthcheck, methods=["GET"]),
        Route("/healthcheck/spool", spool_health, methods=["GET"]),
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
        Route("/v3/cluster", cluster_view, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: api_error_response,
            HTTPException: http_error_response,
            Exception: internal_error_response,
        },
    )
    app.state.api = ApiState(
        store=store,
        router=router,
        config=config,
        sessions=SessionRegistry(),
        write_lock=trio.Lock(),
        auth_failures=AuthFailures(limit=config.auth_failure_limit),
        body_budget=BodyBudget(
            max_bytes=config.max_inflate_bytes, max_inflating=config.max_inflating_bodies
        ),
        session_directory=session_directory,
    )
    app.state.ready = False
    app.state.cluster_status = cluster_status
    app.state.cluster_health = cluster_health
    return app
