"""The supervisor: signal forwarding, the one reaper, the grace period, the exit code.

DESIGN section 6 (behaviour that must hold) and section 8 (what is reported at exit).
The app was spawned by ``shims.entry`` before trio was imported, with every handled signal
blocked in the shim; this module takes over from there.

Signals. One ``trio.open_signal_receiver`` for the shim's whole life, installed first, and
only then are the signals unblocked: whatever arrived since start-up is delivered now, once,
to the app. Every catchable signal except SIGCHLD is forwarded to the app's process group
(``--single-child``: to the app alone, through its pidfd, so a recycled pid is never hit).
SIGTSTP, SIGTTIN and SIGTTOU are forwarded like the others; the receiver's handler replaces
their default action, so the shim itself never stops (the app and its group stop; the shim
keeps capturing and forwards the SIGCONT that resumes them). SIGTERM and SIGINT also start
the grace period: ``Stopping all processes with SIGTERM`` (or ``SIGINT``: the notice names
the signal forwarded), then after ``--grace`` seconds the R12 and SIGKILL notices and SIGKILL
to the group. The signal sets and the signalfd are ``shims.signals``'s.

Some signals are read from a signalfd instead, and stay blocked in every thread:
- SIGPIPE: a write of the shim's own (a closed stdout, a reset router socket) raises SIGPIPE
  at the writing thread, and a handler cannot tell that from a SIGPIPE someone sent. The
  signalfd gives the sender's pid: ours → our own broken pipe, dropped; anyone else's →
  forwarded.
- SIGTTOU: the shim writes to its terminal (the tee) after handing the terminal to the app;
  with ``tostop`` set the kernel would answer with SIGTTOU, unless SIGTTOU is blocked, in
  which case it lets the write through. Blocked, it is only ever one someone sent.
- SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS: sent with kill(), they are forwarded like
  the others; raised by a real fault in the shim, a Python-level handler would return to the
  faulting instruction forever, while a blocked fault signal makes the kernel kill the shim
  at once (with a core), which is the honest outcome.

Reaping. ``shims.reaper.Reaper`` is the only ``waitpid`` caller of the process (trio's
process API is never used: its own waitpid would race it and misreport exit codes).
``ReapLoop`` runs it on every SIGCHLD, when the app's pidfd becomes readable (the app
exited), and every second (SIGCHLDs coalesce).

Notices. ``Starting process with command …`` carries the time the app was spawned (taken by
``shims.entry`` just before the spawn), not the time trio got running, so it never follows
the app's first lines. Start-up problems the shim worked around (an invalid ``--ps``) follow
it as notices of their own.

Exit. After the app exits: readers get until EOF or 1 s, then ``Process exited with status
N`` is queued, the shipper has ``--flush-timeout`` to get everything acknowledged, and what is
left is counted on stderr (``logshim: N lines not delivered``). The exit code is the app's,
128+N after signal N, and 0 when listed with ``-e``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from logplex.codecs import notices
from logplex.codecs.records import KIND_STDERR, KIND_STDOUT
from shims.capture import LineConsumer, PipeReader
from shims.console import warn
from shims.early import StartupPipeReader
from shims.fallback import supervise_plainly
from shims.options import ShimOptions
from shims.reaper import READ_AFTER_EXIT_S, Reaper, final_exit_code, status_code
from shims.signals import (
    GRACE_SIGNALS,
    SIGNALFD_SIGNALS,
    open_signalfd,
    read_signalfd,
    signal_name,
)
from shims.tee import TeeWriter

REAP_SWEEP_S = 1.0


class SignalAction(enum.Enum):
    REAP = "reap"
    FORWARD = "forward"
    FORWARD_AND_START_GRACE = "forward and start grace"
    IGNORE = "ignore"


def route_signal(signum: int, *, app_running: bool, grace_started: bool) -> SignalAction:
    """What the supervisor does with a signal it received (a pure decision, table-tested)."""
    if signum == signal.SIGCHLD:
        return SignalAction.REAP
    if not app_running:
        return SignalAction.IGNORE
    if signum in GRACE_SIGNALS and not grace_started:
        return SignalAction.FORWARD_AND_START_GRACE
    return SignalAction.FORWARD


class App:
    """The supervised child: its pid (= process group id), pidfd, and how to signal it."""

    def __init__(self, pid: int, *, single_child: bool) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.single_child = single_child
        self.wait_status: int | None = None
        self.exited = trio.Event()
        self.exited_at_s = 0.0

    @property
    def running(self) -> bool:
        return self.wait_status is None

    def forward(self, signum: int) -> None:
        """Deliver ``signum`` to the app's group (or the app with ``--single-child``)."""
        if not self.running:
            return
        if not self.single_child:
            try:
                os.killpg(self.pid, signum)
                return
            except (ProcessLookupError, PermissionError):
                pass  # the app left its group (setsid): signal the app itself
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signum)

    def kill_group(self) -> None:
        """SIGKILL the app and its process group (the end of the grace period)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


class ReapLoop:
    """Runs the one ``Reaper`` on every nudge (SIGCHLD, the app's pidfd) and every second."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.reaper = Reaper(app.pid)
        self._nudged = trio.Event()

    def nudge(self) -> None:
        self._nudged.set()

    def reap(self) -> None:
        if self.reaper.reap():
            self.app.wait_status = self.reaper.app_wait_status
            self.app.exited_at_s = trio.current_time()
            self.app.exited.set()

    async def run(self) -> None:
        """Reap on every nudge and every ``REAP_SWEEP_S``."""
        while True:
            self.reap()
            with trio.move_on_after(REAP_SWEEP_S):
                await self._nudged.wait()
            self._nudged = trio.Event()


class Supervisor:
    """Owns the app from spawn to the shim's exit."""

    def __init__(
        self,
        options: ShimOptions,
        *,
        app: App,
        stdout_fd: int,
        stderr_fd: int,
        forwarded_signals: frozenset[int],
        early: StartupPipeReader | None = None,
        spawned_at_us: int | None = None,
    ) -> None:
        self.options = options
        self.early = early
        self.app = app
        self.spawned_at_us = spawned_at_us
        self.reaper = ReapLoop(app)
        self.forwarded_signals = forwarded_signals
        self.grace_started = False
        self.grace_signal: int = signal.SIGTERM
        self.signals_forwarded = 0
        self._nursery: trio.Nursery | None = None
        self.tees: list[TeeWriter] = []
        stdout_tee = stderr_tee = None
        if options.tee:
            stdout_tee, stderr_tee = TeeWriter(1), TeeWriter(2)
            self.tees = [stdout_tee, stderr_tee]
        self.shipper = None
        consumer: LineConsumer | None = None
        wait_for_room: Callable[[], Awaitable[None]] | None = None
        if options.router is not None:
            from shims.shipper import Shipper

            try:
                self.shipper = Shipper(options)
            except Exception as exc:  # the app runs already: supervise it without shipping
                warn(f"logshim: cannot ship to {options.router!r} ({exc}); supervising only")
            else:
                consumer = self.shipper
                if options.block:
                    wait_for_room = self.shipper.wait_for_room
        self.readers = [
            PipeReader(
                stdout_fd,
                KIND_STDOUT,
                consumer=consumer,
                tee=stdout_tee,
                max_line_bytes=options.max_line_bytes,
                wait_for_room=wait_for_room,
            ),
            PipeReader(
                stderr_fd,
                KIND_STDERR,
                consumer=consumer,
                tee=stderr_tee,
                max_line_bytes=options.max_line_bytes,
                wait_for_room=wait_for_room,
            ),
        ]

    def notice(self, text: bytes) -> None:
        if self.shipper is not None:
            self.shipper.push_notice(text)

    def _notice_start(self) -> None:
        """``Starting process …`` stamped with the spawn time, then the start-up problems."""
        if self.shipper is None:
            return
        text = notices.starting_process(self.options.command)
        if self.spawned_at_us is None:
            self.notice(text)
        else:
            self.shipper.outbox.push_notice(self.spawned_at_us, text, trio.current_time())
        for problem in self.options.notices:
            self.notice(problem.removeprefix("logshim: ").encode("utf-8", "backslashreplace"))

    async def run(self, signals: AsyncIterator[int] | None = None) -> int:
        """Supervise until the app has exited and its output is shipped; the exit code."""
        self._notice_start()
        if self.early is not None:
            self.early.stop()
            if self.shipper is not None and self.early.dropped_lines:
                self.shipper.outbox.note_dropped(
                    self.early.dropped_lines, self.early.dropped_since_us
                )
            for reader in self.readers:
                reader.take_early(self.early.chunks[reader.fd], eof=reader.fd in self.early.eof)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.reaper.run)
            nursery.start_soon(self._watch_app_pidfd)
            if signals is not None:
                nursery.start_soon(self._receive_signals, signals)
            nursery.start_soon(self._watch_signalfd)
            for tee in self.tees:
                nursery.start_soon(_guarded, "the tee", tee.run)
            if self.shipper is not None:
                nursery.start_soon(_guarded, "shipping", self.shipper.run)
            async with trio.open_nursery() as capture:
                for reader in self.readers:
                    capture.start_soon(reader.run)
                await self.app.exited.wait()
                with trio.move_on_at(self.app.exited_at_s + READ_AFTER_EXIT_S):
                    for reader in self.readers:
                        await reader.finished.wait()
                capture.cancel_scope.cancel()
            for reader in self.readers:
                reader.read_remaining()
            assert self.app.wait_status is not None
            code = status_code(self.app.wait_status)
            self.notice(notices.process_exited(code))
            # Shipping and the tee finish side by side, within the same deadline.
            async with trio.open_nursery() as flushing:
                if self.shipper is not None:
                    flushing.start_soon(self.shipper.flush, self.options.flush_timeout_s)
                for tee in self.tees:
                    flushing.start_soon(_wait_at_most, self.options.flush_timeout_s, tee.wait_idle)
            if self.shipper is not None:
                undelivered = self.shipper.outbox.undelivered()
                if undelivered:
                    warn(f"logshim: {undelivered} lines not delivered")
            nursery.cancel_scope.cancel()
        return final_exit_code(code, self.options.success_codes)

    async def _watch_app_pidfd(self) -> None:
        await trio.lowlevel.wait_readable(self.app.pidfd)
        self.reaper.nudge()

    async def _receive_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self._handle_signal(signum)

    def _handle_signal(self, signum: int) -> None:
        action = route_signal(
            signum, app_running=self.app.running, grace_started=self.grace_started
        )
        if action is SignalAction.REAP:
            self.reaper.nudge()
        elif action is SignalAction.FORWARD:
            self.app.forward(signum)
            self.signals_forwarded += 1
        elif action is SignalAction.FORWARD_AND_START_GRACE:
            self.app.forward(signum)
            self.signals_forwarded += 1
            self.grace_started = True
            self.grace_signal = signum
            self.notice(notices.stopping_all_processes(signal_name(signum).encode()))
            assert self._nursery is not None
            self._nursery.start_soon(self._grace_then_kill)

    async def _grace_then_kill(self) -> None:
        with trio.move_on_after(self.options.grace_s):
            await self.app.exited.wait()
            return
        grace_signal = signal_name(self.grace_signal).encode()
        self.notice(notices.exit_timeout_r12(self.options.grace_s, grace_signal))
        self.notice(notices.stopping_sigkill())
        self.app.kill_group()

    async def _watch_signalfd(self) -> None:
        signals = SIGNALFD_SIGNALS & self.forwarded_signals
        if not signals:
            return
        fd = open_signalfd(signals)
        own_pid = os.getpid()
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                for signo, sender_pid in read_signalfd(fd):
                    if signo == signal.SIGPIPE and sender_pid == own_pid:
                        continue  # our own write hit a broken pipe
                    self._handle_signal(signo)
        finally:
            os.close(fd)


async def _wait_at_most(timeout_s: float, wait: Callable[[], Awaitable[None]]) -> None:
    with trio.move_on_after(timeout_s):
        await wait()


async def _guarded(what: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a helper task whose failure must never end supervision (or cancel capture)."""
    try:
        await run()
    except Exception as exc:
        warn(f"logshim: {what} stopped after an internal error: {exc!r}")


def supervise(
    options: ShimOptions,
    *,
    pid: int,
    stdout_fd: int,
    stderr_fd: int,
    handled_signals: frozenset[int],
    early: StartupPipeReader | None = None,
    spawned_at_us: int | None = None,
) -> int:
    """Run the supervisor under trio; return the shim's exit code.

    An internal error must not orphan the app: after one, ``shims.fallback`` supervises it
    to the end without trio (signals, reaping, tee; no shipping).
    """
    running: list[Supervisor] = []
    try:
        return trio.run(
            _supervise,
            options,
            pid,
            stdout_fd,
            stderr_fd,
            handled_signals,
            early,
            spawned_at_us,
            running,
        )
    except Exception as exc:
        warn(f"logshim: internal error ({exc!r}); supervising without shipping from now on")
        pipes = {stdout_fd: 1, stderr_fd: 2}
        wait_status = None
        if running:
            wait_status = running[0].app.wait_status
            readers = zip(running[0].readers, (1, 2), strict=True)
            pipes = {reader.fd: fd for reader, fd in readers if not reader.eof}
        if early is not None and not early.stopped:
            early.stop()  # its chunks are lost to shipping; the pipes' rest is teed below
        return supervise_plainly(
            pid,
            pipes=pipes,
            handled_signals=handled_signals,
            wait_status=wait_status,
            tee=options.tee,
            success_codes=options.success_codes,
        )


async def _supervise(
    options: ShimOptions,
    pid: int,
    stdout_fd: int,
    stderr_fd: int,
    handled_signals: frozenset[int],
    early: StartupPipeReader | None,
    spawned_at_us: int | None,
    running: list[Supervisor],
) -> int:
    received = handled_signals - SIGNALFD_SIGNALS
    forwarded = handled_signals - {signal.SIGCHLD}
    app = App(pid, single_child=options.single_child)
    supervisor = Supervisor(
        options,
        app=app,
        stdout_fd=stdout_fd,
        stderr_fd=stderr_fd,
        forwarded_signals=forwarded,
        early=early,
        spawned_at_us=spawned_at_us,
    )
    running.append(supervisor)
    with trio.open_signal_receiver(*received) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, received)
        try:
            return await supervisor.run(signals)
        finally:
            # Leaving the receiver re-raises signals it did not deliver; blocked, they stay
            # pending until the process exits instead of killing it with the wrong status.
            signal.pthread_sigmask(signal.SIG_BLOCK, received)
