"""ptrace(2) and waitpid(2) through ctypes: only the requests the live target needs.

mdbpy freezes a process with PTRACE_SEIZE + PTRACE_INTERRUPT rather than PTRACE_ATTACH: a seized
tracee gets no SIGSTOP injected, and when the tracer dies (even by SIGKILL) the kernel detaches
and resumes it, so the target is always left exactly as it was found. Python's os module has no
ptrace, hence ctypes; libc is loaded on first use so importing this module costs nothing.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import signal
import time
from dataclasses import dataclass

from mdbpy.target.base import X86_64_REGS

PTRACE_GETREGS = 12
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128  # the event in status>>16 for interrupt and group stops of a seized task
WALL = 0x40000000  # waitpid's __WALL: wait for threads (clone children) as well

# The signals that put a process into group-stop; a PTRACE_EVENT_STOP carrying one of these means
# the thread was already stopped by job control, not by our interrupt.
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


@functools.lru_cache(maxsize=1)
def _ptrace_fn():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.ptrace
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_long
    return fn


def ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    """One ptrace request; failures raise OSError with the errno."""
    ctypes.set_errno(0)
    r = _ptrace_fn()(request, tid, addr, data)
    if r == -1:
        e = ctypes.get_errno()
        if e:
            raise OSError(e, os.strerror(e))
    return r


def seize(tid: int) -> None:
    ptrace(PTRACE_SEIZE, tid)


def interrupt(tid: int) -> None:
    ptrace(PTRACE_INTERRUPT, tid)


def detach(tid: int, sig: int = 0) -> None:
    """Detach a stopped tracee, delivering `sig` (a signal it was stopped with) if non-zero."""
    ptrace(PTRACE_DETACH, tid, 0, sig)


def getregs(tid: int) -> dict[str, int]:
    """The thread's `struct user_regs_struct` by X86_64_REGS name (fs_base included)."""
    buf = (ctypes.c_ulong * len(X86_64_REGS))()
    ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(buf))
    return dict(zip(X86_64_REGS, buf))


@dataclass(frozen=True)
class StopEvent:
    """What waitpid reported for one thread.

    stopped is False when the thread exited (it is then reaped). For a stopped thread, `sig` is
    the stop signal and `event` the ptrace event (PTRACE_EVENT_STOP for interrupt/group stops,
    0 for a signal-delivery stop, whose signal must be handed back on detach).
    """

    stopped: bool
    sig: int = 0
    event: int = 0

    @property
    def group_stop(self) -> bool:
        """The thread was stopped by job control (SIGSTOP & co) before or while we attached."""
        return self.stopped and self.event == PTRACE_EVENT_STOP and self.sig in STOP_SIGNALS

    @property
    def pending_signal(self) -> int:
        """The signal the thread would have received had we not stopped it (0 if none)."""
        return self.sig if self.stopped and self.event == 0 else 0


def decode(status: int) -> StopEvent:
    if os.WIFSTOPPED(status):
        return StopEvent(True, os.WSTOPSIG(status), (status >> 16) & 0xFF)
    return StopEvent(False)


def poll(tid: int) -> StopEvent | None:
    """A pending waitpid report for tid without blocking; None when there is none.

    A thread that no longer exists (ECHILD) reads as exited.
    """
    try:
        pid, status = os.waitpid(tid, os.WNOHANG | WALL)
    except ChildProcessError:
        return StopEvent(False)
    if pid == 0:
        return None
    return decode(status)


def wait_stop(tid: int, timeout: float) -> StopEvent | None:
    """Wait for tid's next stop or exit, at most `timeout` seconds; None on timeout.

    Polls instead of blocking in waitpid so a thread stuck in uninterruptible sleep cannot hang
    mdbpy; an interrupted thread normally reports within microseconds, so the first polls are
    tight and the backoff only matters in that rare case.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while True:
        ev = poll(tid)
        if ev is not None:
            return ev
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


# -- freezing a whole process ------------------------------------------------------------------

MAX_ROUNDS = 1000  # each round stops the threads created since the previous round
STOP_TIMEOUT = 5.0  # seconds a thread may take to stop (only a D-state thread is ever slow)


def task_states(pid: int) -> list[tuple[int, str]]:
    """(tid, state letter) of every thread of pid, from /proc/PID/task/*/stat.

    Raises FileNotFoundError when the process is gone; a thread that exits while being listed
    is left out.
    """
    out = []
    for name in os.listdir(f"/proc/{pid}/task"):
        if name.isdigit():
            state = task_state(pid, int(name))
            if state:
                out.append((int(name), state))
    return out


def proc_status(tid: int) -> dict[str, str] | None:
    """/proc/TID/status as a dict of its fields (values stripped), or None when the task does
    not exist: the live target's checks and the spawned program's tracer read it alike."""
    try:
        with open(f"/proc/{tid}/status") as f:
            text = f.read(1 << 16)
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def status_numbers(tid: int, names: tuple[str, ...], base: int = 10) -> dict[str, int] | None:
    """The named fields of /proc/TID/status as numbers, or None when the task is gone or a
    field is missing or not a number (a kernel that words it otherwise: no answer, never
    a traceback in the tracer's loop)."""
    st = proc_status(tid)
    try:
        return None if st is None else {n: int(st[n], base) for n in names}
    except (KeyError, ValueError):
        return None


def task_state(pid: int, tid: int) -> str:
    """The one-letter state of a thread ('' when it no longer exists)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            stat = f.read(4096)
    except OSError:
        return ""
    # the command name is in parentheses and may itself contain ') ': split at the last one
    rest = stat.rpartition(b")")[2].split()
    return rest[0].decode() if rest else ""


class Freezer:
    """Holds every thread of one process in ptrace-stop, and lets them all go again.

    freeze() repeats seize+interrupt over the task list until it is stable, because a running
    thread can create threads while we attach (without PTRACE_O_TRACECLONE they are not traced
    automatically, and we want none of that machinery). Once every listed thread is stopped no new
    thread can appear. Threads that exit meanwhile are reaped and forgotten. release() is
    idempotent and safe to call again if interrupted.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.stops: dict[int, StopEvent] = {}  # tid -> how it stopped
        self.states: dict[int, str] = {}  # tid -> state letter seen just before we stopped it
        self._seized: set[int] = set()

    @property
    def group_stopped(self) -> bool:
        """The process was already stopped by job control when we attached."""
        ev = self.stops.get(self.pid)
        return ev is not None and ev.group_stop

    def freeze(self) -> None:
        """Stop every thread; OSError from seize (EPERM, ESRCH of the leader) goes to the caller."""
        try:
            self._freeze()
        except BaseException:
            self.release()
            raise

    def _freeze(self) -> None:
        from mdbpy.errors import TargetError

        gone: set[int] = set()
        for _ in range(MAX_ROUNDS):
            new = sorted(((t, s) for t, s in task_states(self.pid)
                          if t not in self._seized and t not in gone and s not in "ZX"),
                         key=lambda ts: (ts[0] != self.pid, ts[0]))  # the leader first
            if not new:
                if not self.stops:
                    raise ProcessLookupError(errno.ESRCH, "process has exited")
                return
            for tid, state in new:
                self.states[tid] = state
                try:
                    seize(tid)
                except OSError as e:
                    if tid == self.pid or e.errno not in (errno.ESRCH, errno.EPERM):
                        raise
                    # The leader was allowed, so a refused thread is exiting: forget it once it
                    # is gone, else try it again next round.
                    if task_state(self.pid, tid) in ("", "Z", "X"):
                        gone.add(tid)
                    continue
                self._seized.add(tid)
                try:
                    interrupt(tid)
                except ProcessLookupError:
                    pass  # exited just now: the wait below reaps it
            for tid, _ in new:
                if tid not in self._seized:
                    continue
                ev = wait_stop(tid, STOP_TIMEOUT)
                if ev is None:
                    raise TargetError(f"thread {tid} of process {self.pid} did not stop within "
                                      f"{STOP_TIMEOUT:g} s (uninterruptible sleep?); "
                                      f"try -o nostop")
                if ev.stopped:
                    self.stops[tid] = ev
                else:
                    self._seized.discard(tid)
                    gone.add(tid)
        raise TargetError(f"cannot stop every thread of process {self.pid} (threads keep "
                          f"appearing, or one refuses ptrace); try -o nostop")

    def release(self) -> None:
        """Detach every thread, handing back any signal that arrived while we held it.

        Threads are detached before the leader so that, if the process died meanwhile, the
        leader's exit report (held back until its threads are reaped) can be collected too.
        """
        for tid in sorted(self._seized, key=lambda t: (t == self.pid, t)):
            ev = self.stops.get(tid)
            try:
                detach(tid, ev.pending_signal if ev else 0)
            except OSError:
                self._settle(tid)
            self._seized.discard(tid)
            self.stops.pop(tid, None)

    def _settle(self, tid: int) -> None:
        """A thread we could not detach: it died (reap it) or is not stopped yet (stop, detach)."""
        ev = poll(tid)
        if ev is None:
            if task_state(self.pid, tid) in ("", "Z", "X"):
                wait_stop(tid, 1.0)  # a dead leader reports once its threads are reaped
                return
            try:
                interrupt(tid)
            except OSError:
                return
            ev = wait_stop(tid, 1.0)
        if ev is not None and ev.stopped:
            try:
                detach(tid, ev.pending_signal)
            except OSError:
                pass

    def reap(self, timeout: float = 5.0) -> None:
        """After SIGKILL: collect every thread's exit so the real parent can reap the process."""
        for tid in sorted(self._seized, key=lambda t: (t == self.pid, t)):
            deadline = time.monotonic() + timeout
            for _ in range(16):  # a stop already queued before the kill may come first
                ev = wait_stop(tid, max(0.0, deadline - time.monotonic()))
                if ev is None or not ev.stopped:
                    break
            self._seized.discard(tid)
            self.stops.pop(tid, None)
