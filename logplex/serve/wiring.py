"""``logplex serve``: wiring, start-up and shutdown of the router (DESIGN sections 2 and 7).

Settings (flags, environment, TOML) are resolved in ``logplex.serve.settings``.

Start-up: the soft open-files limit raised to the hard one, and the ingest listeners' caps
derived from it (``logplex.serve.limits``) -> data dir -> auth key (``DATA_DIR/auth-key``,
mode 0600, generated with ``secrets``)
-> config store -> ``Router`` with every stored channel applied -> HTTP (``logplex.serve.http``),
shim and syslog listeners (TLS on the last two with ``--tls-cert/--tls-key``) -> one
``listening NAME=HOST:PORT`` line each on stdout, flushed -> ``/healthcheck`` ready.

Shutdown on SIGTERM or SIGINT (one signal receiver for the whole run): stop accepting and
close ingest connections (shims resend what was not acknowledged to the next router), stop
the HTTP server, flush drain buffers for at most ``--shutdown-grace`` seconds, log
``stopped``, exit 0.
Another signal cuts the flush short, except a repeat of the first one within 2 s (a
platform and a supervisor both delivering the same SIGTERM).

Log lines go to stderr, each with an ISO 8601 UTC timestamp; stdout carries only the lines
DESIGN 2 names. The drains package is imported at start like everything else: a broken
install fails the start instead of a router that stores drains and never runs them.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import trio
from prometheus_client import REGISTRY

from drains import DestinationPolicy, DrainSettings, open_drain, parse_drain_url
from logplex import metrics
from logplex.api.app import ApiConfig, create_app
from logplex.api.drain_targets import parse_listener
from logplex.api.registry import (
    SESSION_TTL_S,
    SessionSpec,
    parse_session_request,
    session_spec_json,
)
from logplex.api.sessions import drop_connections_that_stop_reading
from logplex.cluster.bridge import (
    BridgeError,
    BridgeSettings,
    BridgeTimeout,
    NatsBridge,
    NotConnected,
)
from logplex.cluster.kvconfig import KvConfigStore
from logplex.cluster.node import ClusterNode, ClusterSettings
from logplex.cluster.sessions import KvSessions
from logplex.codecs import rfc5424
from logplex.config.store import ConfigStore, ConfigStoreAPI, StoreUnavailable
from logplex.fanout.router import DrainFactory, Router
from logplex.ingest.shim import ShimListener, ShimListenerSettings
from logplex.ingest.syslog import SyslogListener, SyslogListenerSettings
from logplex.serve.http import HttpServer, HttpServerSettings
from logplex.serve.http import listeners_of as http_listeners
from logplex.serve.limits import (
    ConnectionCaps,
    connection_caps,
    describe_caps,
    raise_open_files_limit,
)
from logplex.serve.secrets import (
    check_private,
    key_given_in_argv,
    read_key_file,
    warn_key_in_argv,
)
from logplex.serve.settings import HostPort, ServeConfigError, ServeSettings, settings_from_args
from logplex.serve.settings import (
    add_arguments as add_arguments,
)  # the ``serve`` subcommand's flags
from logplex.spool.log import Spool

log = logging.getLogger(__name__)

# -- start-up pieces -----------------------------------------------------------------------

AUTH_KEY_FILE: Final = "auth-key"
CONFIG_DB_FILE: Final = "config.sqlite3"
HTTP_GRACEFUL_TIMEOUT_S: Final = 1.0  # tail sessions never end by themselves


def load_or_create_auth_key(path: Path) -> tuple[str, bool]:
    """The key stored at ``path``, or a new one written there with mode 0600: (key, created)."""
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key, False
    key = secrets.token_urlsafe(32)
    # Created with mode 0600 from the first byte: never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    os.chmod(path, 0o600)  # an existing empty file may have had a wider mode
    return key, True


MEMBER_ID_FILE: Final = "cluster-member-id"


def load_or_create_member_id(path: Path) -> str:
    """This router's id in the cluster, kept in its data dir: a restarted router is the same
    member and gets the same partitions back (rendezvous hashing is stable per member set).
    Every router needs its own data dir."""
    try:
        member = path.read_text().strip()
    except FileNotFoundError:
        member = ""
    if re.fullmatch(r"[a-z0-9]{6,32}", member):
        return member
    member = secrets.token_hex(6)
    path.write_text(member + "\n")
    return member


def _private_paths(settings: ServeSettings, key_path: Path) -> list[tuple[Path, str]]:
    """The directories and files of ``settings`` that must be the router user's only."""
    paths = [(settings.data_dir, "the data dir")]
    if settings.auth_key is None and settings.auth_key_file is None:
        paths.append((key_path, "the auth key file"))
    if settings.auth_key_file is not None:
        paths.append((settings.auth_key_file, "--auth-key-file"))
    if settings.tls_key is not None:
        paths.append((settings.tls_key, "--tls-key"))
    if settings.spool_dir is not None and settings.spool is not None:
        paths.append((settings.spool_dir, "the spool directory"))
    return paths


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ServeConfigError(
            f"cannot load --tls-cert {cert} / --tls-key {key} ({exc}); give a PEM certificate "
            "chain and its unencrypted PEM private key"
        ) from None
    return context


@dataclass(frozen=True, slots=True)
class _DrainSupport:
    factory: DrainFactory
    settings: DrainSettings
    validate_url: Callable[[str], None]


def _drain_support(
    settings: ServeSettings, listen_addresses: tuple[tuple[str, str], ...]
) -> _DrainSupport:
    """The drains package's factory, settings and URL check; drains check every connect
    against the destination policy and the router's own listeners (``drains._policy``)."""
    drain_settings = DrainSettings(
        buffer_messages=settings.drain_buffer,
        retry_window_s=settings.drain_retry_window,
        ca_file=str(settings.drain_ca_file) if settings.drain_ca_file else None,
        destination_policy=DestinationPolicy(
            deny_private=settings.deny_private_drains,
            own_listeners=tuple(parse_listener(*named) for named in listen_addresses),
        ),
    )

    def validate_url(url: str) -> None:
        parse_drain_url(url)

    return _DrainSupport(open_drain, drain_settings, validate_url)


def _announce(name: str, address: str) -> None:
    sys.stdout.write(f"listening {name}={address}\n")
    sys.stdout.flush()


async def _open_listeners(name: str, address: HostPort) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise ServeConfigError(
            f"cannot listen on --{name} {address}: {exc.strerror or exc}; pick another "
            "address or port (0 picks a free one)"
        ) from None


def _bound_address(listeners: list[trio.SocketListener]) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    return str(HostPort(host, port))


def _with_tls(
    listeners: list[trio.SocketListener], context: ssl.SSLContext | None
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    if context is None:
        return list(listeners)
    return [trio.SSLListener(listener, context) for listener in listeners]


def _bind_http(address: HostPort) -> tuple[socket.socket, str]:
    """Bind the HTTP socket before the app is built (port 0 gives its port, so session URLs
    can name it): (listening socket, bound HOST:PORT)."""
    try:
        sock = socket.create_server(
            (address.host, address.port),
            family=socket.AF_INET6 if ":" in address.host else socket.AF_INET,
            backlog=1024,
        )
    except OSError as exc:
        raise ServeConfigError(
            f"cannot listen on --http {address}: {exc.strerror or exc}; pick another "
            "address or port (0 picks a free one)"
        ) from None
    # A tail client that stops reading is finally dropped by the kernel (DESIGN 8: 60 s).
    drop_connections_that_stop_reading(sock)
    host, port = sock.getsockname()[:2]
    return sock, str(HostPort(host, port))


def _http_config(settings: ServeSettings, max_connections: int) -> HttpServerSettings:
    return HttpServerSettings(
        idle_timeout_s=settings.http_idle_timeout,
        graceful_timeout_s=HTTP_GRACEFUL_TIMEOUT_S,
        max_connections=max_connections,
        max_connections_per_ip=settings.max_connections_per_ip,
    )


def _http_errorlog() -> logging.Logger:
    # hypercorn's errors through our logging setup only, warnings and up.
    errorlog = logging.getLogger("hypercorn.error")
    errorlog.setLevel(logging.WARNING)
    return errorlog


# -- the run -------------------------------------------------------------------------------


async def serve(
    settings: ServeSettings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the router until SIGTERM/SIGINT, then stop accepting, flush drains and return."""
    open_files = raise_open_files_limit()
    caps = connection_caps(open_files.soft, settings.max_connections)
    log.info(
        "%s",
        describe_caps(open_files, caps, settings.max_connections, settings.max_connections_per_ip),
    )
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = settings.data_dir / AUTH_KEY_FILE
        check_private(
            _private_paths(settings, key_path),
            allow_insecure=settings.allow_insecure_permissions,
        )
        if settings.auth_key is not None:
            auth_key = settings.auth_key
        elif settings.auth_key_file is not None:
            auth_key = read_key_file(settings.auth_key_file)
        else:
            auth_key, created = load_or_create_auth_key(key_path)
            what = "generated into" if created else "read from"
            sys.stdout.write(f"auth key {what} {key_path.resolve()}\n")
    except OSError as exc:
        raise ServeConfigError(
            f"cannot use --data-dir {settings.data_dir} ({exc.strerror or exc}); give a "
            "directory this user can create and write"
        ) from None
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = server_tls_context(settings.tls_cert, settings.tls_key)
    if not rfc5424.C_FORMATTER:
        log.warning(
            "logplex.codecs._cframes is not built (no C compiler at install time): drain "
            "frames are formatted in Python, several times slower; install a C compiler "
            "and reinstall logplex for full speed"
        )
    # Bind everything first: a busy port is a clear error before anything else starts.
    shim_sockets = await _open_listeners("shim", settings.shim)
    try:
        syslog_sockets = await _open_listeners("syslog", settings.syslog)
        http_socket, http_address = _bind_http(settings.http)
    except BaseException:
        for listener in shim_sockets:
            listener.socket.close()
        raise
    listen_addresses = (
        ("http", http_address),
        *(("shim", _bound_address([s])) for s in shim_sockets),
        *(("syslog", _bound_address([s])) for s in syslog_sockets),
    )
    drains = _drain_support(settings, listen_addresses)

    # One receiver for the whole run: signals are never lost or re-raised between phases.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        public_url = (settings.public_url or f"http://{http_address}").rstrip("/")
        cluster = _cluster_parts(settings, public_url) if settings.nats is not None else None
        store: ConfigStoreAPI
        if cluster is None:
            database = settings.data_dir / CONFIG_DB_FILE
            try:
                store = await ConfigStore.open(database)
            except Exception as exc:
                raise ServeConfigError(
                    f"cannot open the config database {database} ({exc}); check the file "
                    "and its directory, or start with an empty --data-dir"
                ) from None
            spool = await _open_spool(settings)
        else:
            spool = None
        router = Router(
            history_lines=settings.history,
            history_max_bytes=settings.history_max_bytes,
            drain_factory=drains.factory,
            drain_settings=drains.settings,
            spool=spool,
            cluster=cluster.node if cluster is not None else None,
        )
        if cluster is not None:
            cluster.node.attach(router)
            store = KvConfigStore(
                cluster.bridge,
                apply=router.apply_channel,
                remove=router.remove_channel,
                replicas=cluster.node.settings.replicas,
            )
        collector = metrics.register_router_collector(router.counts)
        metrics.register_task_collector()
        spool_collector = metrics.register_spool_collector(spool) if spool is not None else None
        try:
            async with trio.open_nursery() as root:
                if cluster is not None:
                    await _start_cluster(root, cluster, store)
                else:
                    await _restore_single(store, router, spool)
                if spool is not None:
                    await root.start(spool.run)
                await root.start(router.run)
                root.start_soon(metrics.measure_event_loop_lag)
                app = create_app(
                    store=store,
                    router=router,
                    config=ApiConfig(
                        auth_key=auth_key,
                        public_url=public_url,
                        max_drains_per_channel=settings.max_drains_per_channel,
                        max_channels=settings.max_channels,
                        max_tokens_per_channel=settings.max_tokens_per_channel,
                        max_sessions_per_channel=settings.max_sessions_per_channel,
                        max_clients_per_session=settings.max_clients_per_session,
                        validate_drain_url=drains.validate_url,
                        deny_private_drains=settings.deny_private_drains,
                        listen_addresses=listen_addresses,
                        http_body_timeout_s=settings.http_body_timeout,
                        max_inflating_bodies=settings.max_inflating_bodies,
                        max_inflate_bytes=settings.max_inflate_bytes,
                        auth_failure_limit=settings.auth_failure_limit,
                    ),
                    session_directory=cluster.sessions if cluster is not None else None,
                    cluster_status=cluster.node.status if cluster is not None else None,
                    cluster_health=cluster.node.healthy if cluster is not None else None,
                )
                http_stop = trio.Event()
                ingest = await root.start(
                    _run_ingest, router, shim_sockets, syslog_sockets, tls, settings, caps
                )
                await root.start(
                    _run_http, app, http_socket, _http_config(settings, caps.http), http_stop
                )
                _announce("http", http_address)
                _announce("shim", _bound_address(shim_sockets))
                _announce("syslog", _bound_address(syslog_sockets))
                app.state.ready = True
                task_status.started()

                first_signal = signal.SIGTERM
                async for signum in signals:
                    first_signal = signal.Signals(signum)
                    log.info("%s: stopping", first_signal.name)
                    break
                stopping_since = trio.current_time()
                app.state.ready = False
                ingest.cancel()
                http_stop.set()
                with trio.CancelScope() as flush_scope:
                    root.start_soon(
                        _cut_short_on_another_signal,
                        signals,
                        first_signal,
                        stopping_since,
                        flush_scope,
                    )
                    if cluster is not None:
                        # What was accepted but not yet stored in JetStream goes first.
                        with trio.move_on_after(settings.shutdown_grace):
                            await router.wait_durable()
                    await router.flush_drains(settings.shutdown_grace)
                    if cluster is not None:
                        await cluster.node.shutdown()
                root.cancel_scope.cancel()
        finally:
            REGISTRY.unregister(collector)
            if spool_collector is not None:
                REGISTRY.unregister(spool_collector)
            with trio.CancelScope(shield=True):
                if spool is not None:
                    await spool.close()
                if cluster is None or cluster.started:
                    await store.aclose()


async def _restore_single(store: ConfigStoreAPI, router: Router, spool: Spool | None) -> None:
    """Single process: apply the stored channels and refill their histories from the spool."""
    channels = await store.load_channels()
    if spool is not None:
        spool.forget_unknown_drains(d.token for c in channels for d in c.drains)
    restored = 0
    for channel in channels:
        router.apply_channel(channel)
        restored += router.restore_history(channel.name)
    if spool is not None:
        log.info(
            "spool %s: %d segments, %d bytes; history of %d lines restored",
            spool.directory,
            len(spool.segments),
            spool.total_bytes(),
            restored,
        )


@dataclass(eq=False, slots=True)
class _ClusterParts:
    bridge: NatsBridge
    node: ClusterNode
    sessions: KvSessions[SessionSpec]
    started: bool = False


def _cluster_parts(settings: ServeSettings, public_url: str) -> _ClusterParts:
    """The cluster mode's pieces (DESIGN 10), not yet connected."""
    assert settings.nats is not None
    replicas = settings.nats_replicas or (3 if len(settings.nats) >= 3 else 1)
    bridge = NatsBridge(
        BridgeSettings(
            servers=settings.nats,
            creds_file=settings.nats_creds,
            ca_file=settings.nats_ca_file,
            name=f"logplex {socket.gethostname()}",
        )
    )
    node = ClusterNode(
        bridge,
        member_id=load_or_create_member_id(settings.data_dir / MEMBER_ID_FILE),
        settings=ClusterSettings(
            partitions=settings.nats_partitions,
            replicas=replicas,
            lease_ttl_s=settings.nats_lease_ttl,
            stream_max_bytes=settings.nats_stream_max_bytes,
            public_url=public_url,
        ),
    )
    sessions = KvSessions(
        bridge,
        ttl_s=SESSION_TTL_S,
        to_json=session_spec_json,
        from_json=parse_session_request,
        replicas=replicas,
    )
    return _ClusterParts(bridge, node, sessions)


async def _start_cluster(root: trio.Nursery, cluster: _ClusterParts, store: Any) -> None:
    """Connect, load the config from KV (applied to the router by its watcher), then take
    part in ownership."""
    try:
        await root.start(cluster.bridge.run)
    except BridgeError as exc:
        raise ServeConfigError(f"cannot use --nats: {exc}") from None
    cluster.started = True
    for what, run in (
        ("the config bucket", store.run),
        ("the sessions bucket", cluster.sessions.run),
        ("the cluster's streams and leases", cluster.node.run),
    ):
        await _start_when_nats_answers(root, what, run)
    metrics.CLUSTER_CONNECTED.set(1)
    root.start_soon(_report_connection, cluster.bridge)
    log.info(
        "cluster member %s: %d partitions, %d replicas, lease TTL %.1f s",
        cluster.node.member_id,
        cluster.node.partitions,
        cluster.node.settings.replicas,
        cluster.node.settings.lease_ttl_s,
    )


CLUSTER_START_PATIENCE_S: Final = 60.0


async def _start_when_nats_answers(root: trio.Nursery, what: str, run: Any) -> None:
    """Start a cluster component; while NATS does not answer (a JetStream cluster still
    electing its leaders after a restart) try again, for up to ``CLUSTER_START_PATIENCE_S``."""
    deadline = trio.current_time() + CLUSTER_START_PATIENCE_S
    while True:
        try:
            await root.start(run)
            return
        except (BridgeTimeout, NotConnected, StoreUnavailable) as exc:
            if trio.current_time() >= deadline:
                raise ServeConfigError(
                    f"cannot start the cluster mode on --nats ({what}): {exc}"
                ) from None
            log.info("%s: NATS did not answer yet (%s); trying again", what, exc)
            await trio.sleep(1.0)
        except BridgeError as exc:
            raise ServeConfigError(f"cannot start the cluster mode on --nats: {exc}") from None


async def _report_connection(bridge: NatsBridge) -> None:
    while True:
        metrics.CLUSTER_CONNECTED.set(1 if bridge.connected else 0)
        await trio.sleep(1.0)


async def _open_spool(settings: ServeSettings) -> Spool | None:
    """The durable spool of ``settings`` read back from disk, or None with ``--no-spool``."""
    directory = settings.spool_dir
    if directory is None:
        log.info("spool off (--no-spool): drains buffer in memory, drop-oldest, L10")
        return None
    spool = Spool(
        directory,
        max_bytes=settings.spool_max_bytes,
        sync_ms=settings.spool_sync_ms,
        history_lines=settings.history,
    )
    try:
        await trio.to_thread.run_sync(spool.open)
    except OSError as exc:
        raise ServeConfigError(
            f"cannot use the spool directory {directory} ({exc.strerror or exc}); give "
            "--spool a directory this user can create and write, or run with --no-spool"
        ) from None
    metrics.SPOOL_MODE.set(1)
    return spool


DUPLICATE_SIGNAL_WINDOW_S: Final = 2.0


def is_duplicate_signal(
    first: signal.Signals, first_at_s: float, again: signal.Signals, again_at_s: float
) -> bool:
    """A repeat of the first signal soon after it is the same request delivered twice.

    A platform that signals every process of a container plus a supervisor that forwards
    its own SIGTERM deliver two SIGTERMs at once; that must not cut the drain flush short.
    A different signal (Ctrl-C after SIGTERM) or the same one later is an operator asking
    to stop now.
    """
    return again == first and again_at_s - first_at_s < DUPLICATE_SIGNAL_WINDOW_S


async def _cut_short_on_another_signal(
    signals: Any, first: signal.Signals, first_at_s: float, flush_scope: trio.CancelScope
) -> None:
    async for signum in signals:
        again = signal.Signals(signum)
        if is_duplicate_signal(first, first_at_s, again, trio.current_time()):
            log.info("%s again right away: taken as the same request", again.name)
            continue
        log.warning("%s during shutdown: not waiting for drains to flush", again.name)
        flush_scope.cancel()
        return


async def _run_ingest(
    router: Router,
    shim_sockets: list[trio.SocketListener],
    syslog_sockets: list[trio.SocketListener],
    tls: ssl.SSLContext | None,
    settings: ServeSettings,
    caps: ConnectionCaps,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The shim and syslog listeners and all their connections, under one cancel scope;
    each listener with its connection caps (``logplex.serve.limits``) and deadlines."""
    shim = ShimListener(
        router,
        ShimListenerSettings(
            hello_timeout_s=settings.shim_hello_timeout,
            frame_timeout_s=settings.shim_frame_timeout,
            max_connections=caps.shim,
            max_connections_per_ip=settings.max_connections_per_ip,
        ),
    )
    syslog = SyslogListener(
        router,
        SyslogListenerSettings(
            idle_timeout_s=settings.syslog_idle_timeout,
            frame_timeout_s=settings.syslog_frame_timeout,
            max_connections=caps.syslog,
            max_connections_per_ip=settings.max_connections_per_ip,
        ),
    )
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(shim.serve, _with_tls(shim_sockets, tls))
            await nursery.start(syslog.serve, _with_tls(syslog_sockets, tls))
            task_status.started(scope)


async def _run_http(
    app: Any,
    sock: socket.socket,
    config: HttpServerSettings,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    server = HttpServer(app, config, errorlog=_http_errorlog())
    await server.serve(http_listeners(sock), stop, task_status=task_status)


# The hot paths create one tuple per line; with the default gen-0 threshold of 700 the cyclic
# garbage collector ran every few hundred lines and cost 30-40 % of the shim-ingest CPU
# (perf/RESULTS.md). Lines form no cycles, so collections can be rarer.
GC_THRESHOLDS: Final = (50_000, 50, 100)


def tune_gc() -> None:
    """Make cyclic garbage collection rare and keep start-up objects out of it."""
    gc.collect()
    gc.freeze()  # everything alive after start-up is never scanned again
    gc.set_threshold(*GC_THRESHOLDS)


class UtcLogFormatter(logging.Formatter):
    """``2026-11-27T20:39:33.123+00:00 LEVEL logger: message``: ISO 8601 UTC on every line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds")


def configure_logging() -> None:
    """Router log lines go to stderr with a UTC timestamp; stdout keeps only the lines of
    DESIGN 2 (``listening NAME=HOST:PORT``, the auth key's path)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main(args: argparse.Namespace) -> int:
    """``logplex serve``: 0 after a graceful stop (logged ``stopped``), 2 for a
    configuration error."""
    configure_logging()
    if key_given_in_argv(sys.argv[1:]):
        warn_key_in_argv()
    try:
        settings = settings_from_args(args, os.environ)
        tune_gc()
        trio.run(serve, settings)
    except ServeConfigError as exc:
        sys.stderr.write(f"logplex serve: {exc}\n")
        return 2
    except BaseExceptionGroup as group:
        # A configuration error found inside the run's nursery (the cluster mode connects
        # there) arrives wrapped; it is still a configuration error.
        found, _ = group.split(ServeConfigError)
        if found is None:
            raise
        first: BaseException = found
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        sys.stderr.write(f"logplex serve: {first}\n")
        return 2
    log.info("stopped")
    return 0
