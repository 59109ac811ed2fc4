"""Log ingest over HTTP (``POST /logs``) and history reads (``GET /v3/channels/{ch}/logs``).

DESIGN section 3 and 5.6. ``POST /logs`` is Logplex's HTTP input as log-shuttle speaks it: an
``application/logplex-1`` body of octet-counted RFC 5424 frames in the input layout
``LEN <PRI>1 TS HOST t.TOKEN PS - - MSG``, authenticated with Basic ``token:t.…``. The token
in the credentials decides channel and source (APP-NAME is ignored); PRI, TIMESTAMP, PROCID
and MSG are kept. The whole request is refused on any malformed frame, naming its 1-based
number, so a client never has to guess which part landed. Limits: 8 MiB of body (after
gzip decompression too, checked as it inflates, so a gzip bomb costs at most the limit), or
``max_inflate_bytes`` when that is smaller; the whole body within ``http_body_timeout_s``
(408). Before its body is read a request reserves its worst case in the app's
``BodyBudget`` (``max_inflate_bytes`` for all bodies together, ``max_inflating_bodies`` gzip
bodies at once); without room within ``BUDGET_WAIT_S`` it gets 503 with ``Retry-After``.
Gzip bodies inflate in steps of ``INFLATE_STEP_BYTES`` with a checkpoint between steps, so
a big inflate does not hold up the event loop (8 MiB in one go took 4-6 ms here).

``GET /v3/channels/{ch}/logs?num=N`` answers the last N history lines (default 100) in the
HTTPS-drain layout of 5.2, oldest first, with ``Logplex-Msg-Count``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import trio
import trio.lowlevel
from starlette.requests import Request
from starlette.responses import Response

from logplex.api.base import (
    AUTH_CHALLENGE,
    ApiError,
    api_state,
    basic_token,
    log_refused_auth,
    read_body_limited,
    refuse_if_blocked,
    require_admin,
)
from logplex.api.body_budget import (
    BUDGET_WAIT_S,
    RETRY_AFTER_S,
    BudgetExhausted,
    worst_case_bytes,
)
from logplex.api.numbers import parse_whole_number
from logplex.codecs.errors import ProtocolError
from logplex.codecs.logplex1 import encode_https_body, input_messages_with_count
from logplex.codecs.records import Message
from logplex.config.records import TokenInfo
from logplex.metrics import INGEST_BYTES, INGEST_ERRORS, INGEST_MESSAGES, LIMIT_REFUSALS

MAX_LOGS_BODY_BYTES = 8 * 1024 * 1024
LOGPLEX1 = "application/logplex-1"
# Logplex also takes the x- spelling older shippers send.
ACCEPTED_CONTENT_TYPES = (LOGPLEX1, "application/x-logplex-1")
DEFAULT_LOGS_NUM = 100
PROTOCOL = "http"
# Inflating this much blocks the event loop for under a millisecond (8 MiB took 4-6 ms
# here); bodies inflate in steps of it with a checkpoint between steps. A worker thread per
# inflate was tried and grew the router's RSS by ~250 MB (glibc keeps freed 8 MiB buffers in
# per-thread arenas).
INFLATE_STEP_BYTES = 1 << 20
# The ingest error reason of a refused body read, by status.
_BODY_REFUSAL_REASONS = {413: "too_large", 408: "body_timeout", 400: "client_gone"}


class GzipTooLarge(Exception):
    """The gzip body inflates past the limit."""


def inflate_steps(body: bytes, max_bytes: int, step_bytes: int) -> Iterator[bytes]:
    """The inflated gzip ``body`` in pieces of at most ``step_bytes``, refusing as soon as
    the output passes ``max_bytes``.

    Raises ``GzipTooLarge`` or ``ValueError`` (not gzip, truncated, trailing garbage).
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = body
    size = 0
    while True:
        try:
            piece = inflater.decompress(pending, step_bytes)
        except zlib.error as error:
            raise ValueError(f"the gzip body is corrupt: {error}") from None
        size += len(piece)
        if size > max_bytes:
            raise GzipTooLarge(f"the body inflates to more than {max_bytes} bytes")
        pending = inflater.unconsumed_tail
        if piece:
            yield piece
        # A full piece may leave output inside zlib even when all input is taken.
        if inflater.eof or not (pending or len(piece) == step_bytes):
            break
    if not inflater.eof:
        raise ValueError("the gzip body is truncated")
    if inflater.unused_data:
        raise ValueError("the gzip body has bytes after its end")


def gunzip_limited(body: bytes, max_bytes: int) -> bytes:
    """Inflate a gzip body in one go, refusing as soon as the output passes ``max_bytes``."""
    return b"".join(inflate_steps(body, max_bytes, max_bytes + 1))


async def gunzip_incremental(body: bytes, max_bytes: int) -> bytes:
    """``gunzip_limited`` in steps of ``INFLATE_STEP_BYTES``, letting other tasks run between
    them, so a big inflate never holds up the event loop for more than a step."""
    pieces: list[bytes] = []
    for piece in inflate_steps(body, max_bytes, INFLATE_STEP_BYTES):
        if pieces:
            await trio.lowlevel.checkpoint()
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _refuse(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> ApiError:
    INGEST_ERRORS.labels(PROTOCOL, reason).inc()
    return ApiError(status, message, headers=headers)


def count_matches(declared: str, count: int) -> bool:
    """Whether a ``Logplex-Msg-Count`` header value states ``count`` (decimal, as Logplex)."""
    return parse_whole_number(declared.strip()) == count


async def post_logs(request: Request) -> Response:
    state = api_state(request)
    refuse_if_blocked(request)
    token = basic_token(request.headers.get("authorization"))
    info = state.router.lookup_token(token) if token else None
    if info is None:
        log_refused_auth(request, "a missing or unknown channel token")
        raise _refuse(
            401,
            "unauthorized",
            "send Basic auth 'token:t.<uuid>' with a token of an existing channel",
            AUTH_CHALLENGE,
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise _refuse(
            415, "unsupported_media_type", f"Content-Type must be {LOGPLEX1}, not {content_type!r}"
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise _refuse(
            415,
            "unsupported_media_type",
            f"Content-Encoding {encoding!r} is not supported; use gzip",
        )
    gzip = encoding == "gzip"
    max_body_bytes = min(MAX_LOGS_BODY_BYTES, state.config.max_inflate_bytes)
    declared = parse_whole_number(request.headers.get("content-length", ""))
    want_bytes = worst_case_bytes(declared, gzip=gzip, max_body_bytes=max_body_bytes)
    try:
        async with state.body_budget.reserve(want_bytes, inflate=gzip, wait_s=BUDGET_WAIT_S):
            messages, frame_count = await _read_messages(request, info, gzip, max_body_bytes)
    except BudgetExhausted as exhausted:
        LIMIT_REFUSALS.labels(limit=exhausted.limit).inc()
        setting = "--" + exhausted.limit.replace("_", "-")
        raise _refuse(
            503,
            "busy",
            f"too many request bodies are being read and inflated ({setting}); "
            f"retry in {RETRY_AFTER_S} s",
            {"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    declared_count = request.headers.get("logplex-msg-count")
    if declared_count is not None and not count_matches(declared_count, frame_count):
        raise _refuse(
            400,
            "count_mismatch",
            f"Logplex-Msg-Count says {declared_count.strip()} but the body holds {frame_count} "
            f"frame{'' if frame_count == 1 else 's'}",
        )
    if messages:
        state.router.publish(info.channel, messages)
        INGEST_MESSAGES.labels(PROTOCOL).inc(len(messages))
        INGEST_BYTES.labels(PROTOCOL).inc(sum(len(m[4]) for m in messages))
        # 204 means "durable": with the spool, written and fsynced (DESIGN 8).
        await state.router.wait_durable()
    return Response(status_code=204)


async def _read_messages(
    request: Request, info: TokenInfo, gzip: bool, max_body_bytes: int
) -> tuple[list[Message], int]:
    """The body's messages and frame count; the body itself is gone when this returns, so
    the budget reservation around it covers all the body's memory."""
    try:
        body = await read_body_limited(request, max_body_bytes, "the body")
        if gzip:
            body = await gunzip_incremental(body, max_body_bytes)
    except ApiError as error:
        reason = _BODY_REFUSAL_REASONS.get(error.status, "too_large")
        raise _refuse(error.status, reason, error.message, error.headers) from None
    except GzipTooLarge as error:
        raise _refuse(413, "too_large", str(error)) from None
    except ValueError as error:
        raise _refuse(400, "malformed", str(error)) from None
    try:
        # Straight from the body to router messages (no per-frame objects), with the frame
        # count that Logplex-Msg-Count must state.
        return input_messages_with_count(body, source=info.source)
    except ProtocolError as error:  # Logplex1Error names the frame; framing errors the byte
        raise _refuse(400, "malformed", f"request refused, nothing was accepted: {error}") from None


async def channel_logs(request: Request) -> Response:
    require_admin(request)
    state = api_state(request)
    channel: str = request.path_params["channel"]
    raw_num = request.query_params.get("num")
    num = DEFAULT_LOGS_NUM if raw_num is None else parse_whole_number(raw_num)
    if num is None:
        shown = raw_num if raw_num is None or len(raw_num) <= 40 else raw_num[:40] + "…"
        raise ApiError(400, f"num must be a non-negative whole number, got {shown!r}")
    if not state.router.has_channel(channel):
        raise ApiError(404, f"channel {channel!r} not found")
    history = await state.router.fetch_history(channel)
    messages = history[-num:] if num else []
    body, count = encode_https_body(messages)
    return Response(body, media_type=LOGPLEX1, headers={"Logplex-Msg-Count": str(count)})
