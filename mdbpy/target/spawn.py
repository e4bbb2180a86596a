"""Run a program under mdbpy to its end: its exit or a fatal signal (::run, `mdbpy -- PROG`).

The program is started by subprocess, seized (PTRACE_SEIZE) before it executes an instruction
of its own (_spawn), and then runs at full speed: no single-stepping and no system-call
tracing, only the ptrace events the kernel reports by itself. It is stopped at one of two
moments, in the process mdbpy follows:

- its exit (PTRACE_O_TRACEEXIT): the thread calling exit_group(2), or the last thread, stops
  inside the kernel before its memory is torn down, so the heap is intact at that moment;
- a fatal signal (SIGSEGV, SIGABRT, ...: default action, neither caught nor ignored): the
  signal-delivery-stop, before the kernel kills the process or writes a core. The other
  threads are then interrupted too, so nothing moves while mdbpy looks.

Threads are traced as they are made (PTRACE_O_TRACECLONE), so a crash in any thread stops the
program. With follow_fork_mode=child each fork of the followed process is traced and becomes
the followed process (as gdb's follow-fork-mode child); other new processes are let go at once.
The started program stays traced to its end, whichever process is followed, so its exit status
is known and PTRACE_O_EXITKILL kills it if mdbpy dies. finish() lets the program complete (the
exit, or the delivery of the signal) and returns its wait status; kill() ends every process
still traced. Nothing here reads a byte of memory: the stopped process is a LiveTarget (live.py)
held by a Run instead of a Freezer (SpawnTarget).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time

from mdbpy.errors import TargetError
from mdbpy.target import ptrace
from mdbpy.target.base import signal_name
from mdbpy.target.live import LiveTarget

PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_GETEVENTMSG = 0x4201
PTRACE_LISTEN = 0x4208
O_TRACEFORK, O_TRACEVFORK, O_TRACECLONE, O_TRACEEXIT = 0x2, 0x4, 0x8, 0x40
O_EXITKILL = 0x100000
PR_SET_PDEATHSIG = 1
EVENT_EXIT = 6
SYS_EXIT_GROUP = 231  # x86_64: the syscall a thread ending its whole process is in

FOLLOW_MODES = ("parent", "child")
_HELD = {signal.SIGTERM, signal.SIGHUP}  # the signals mdbpy's CLI ends on (cli._on_signal)
# Signals whose default action ends the process (with or without a core); the real-time
# signals terminate too. The rest (SIGCHLD, SIGCONT, SIGURG, SIGWINCH, the stop signals) do not.
_TERMINATING = frozenset(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) | {
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGILL, signal.SIGTRAP,
    signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGUSR1, signal.SIGSEGV,
    signal.SIGUSR2, signal.SIGPIPE, signal.SIGALRM, signal.SIGTERM, signal.SIGSTKFLT,
    signal.SIGXCPU, signal.SIGXFSZ, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO,
    signal.SIGPWR, signal.SIGSYS}


def resolve(prog: str) -> str:
    """The file `prog` names, as a shell finds it but never in the current directory unless
    the user typed a path (`./prog`): a bare name is looked up in the absolute $PATH entries
    only. Raises TargetError saying what is wrong with it."""
    if "/" not in prog:
        for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
            path = os.path.join(d, prog)
            if os.path.isabs(d) and os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise TargetError(f"{prog}: command not found in $PATH (to run a file in the "
                          f"current directory, give its path: ./{prog})")
    if not os.path.exists(prog):
        raise TargetError(f"{prog}: no such file")
    if os.path.isdir(prog):
        raise TargetError(f"{prog}: is a directory")
    if not os.access(prog, os.X_OK):
        raise TargetError(f"{prog}: not executable (chmod +x, or check the mount's noexec)")
    return prog


def describe_status(status: int) -> str:
    """A wait status as a shell's user reads it: `exit status 3`, `killed by SIGSEGV`."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal_name(os.WTERMSIG(status))}"
    return f"exit status {os.WEXITSTATUS(status)}"


def exit_code(status: int) -> int:
    """A wait status as mdbpy's own exit status: the exit code, or 128 + signal as a shell."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _fatal(tid: int, sig: int) -> bool:
    """The signal being delivered to tid ends its process: its default action terminates and
    the process neither catches nor ignores it (/proc's SigCgt and SigIgn masks)."""
    if sig not in _TERMINATING:
        return False
    st = ptrace.status_numbers(tid, ("SigCgt", "SigIgn"), 16)
    if st is None:  # gone: nothing is delivered to it
        return False
    return not (st["SigCgt"] | st["SigIgn"]) & (1 << (sig - 1))


def _cont(tid: int, sig: int = 0) -> None:
    """Resume a stopped tracee (delivering sig); one that was killed meanwhile is let be."""
    try:
        ptrace.ptrace(PTRACE_CONT, tid, 0, sig)
    except ProcessLookupError:
        pass


def _spawn(path: str, argv: list[str], options: int, sigint_default: bool, mask: set):
    """Start the program and seize it before it runs an instruction of its own; its Popen.

    subprocess starts it (no shell; exec's errors come back as exceptions), the child asking
    to be traced (PTRACE_TRACEME) so that the kernel stops it right after the exec, before the
    dynamic loader runs. A TRACEME tracee cannot be interrupted later, so mdbpy hands it over
    from that stop to a job-control stop (detaching with SIGSTOP), seizes it there with
    `options`, and lets it go on with SIGCONT: nothing of the program's own has run yet, so
    neither signal reaches a handler of its. In the child, SIGINT goes back to its default
    when mdbpy was given it so, and the signal mask to `mask` (mdbpy's own before it held
    signals for the spawn); subprocess restores SIGPIPE and SIGXFSZ, which Python ignores."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after the fork

    def child() -> None:
        # killed with mdbpy from the first instruction: EXITKILL only covers the program
        # once it is seized, and mdbpy may be killed while handing it over (the program
        # would go on, or stay stopped, holding mdbpy's terminal and pipes)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # mdbpy died before the line above
            os._exit(127)
        if sigint_default:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        ptrace.ptrace(PTRACE_TRACEME, 0)

    try:
        proc = subprocess.Popen(argv, executable=path, preexec_fn=child)
    except OSError as e:
        raise TargetError(f"cannot execute {path}: {e.strerror}") from None
    except subprocess.SubprocessError:
        raise TargetError(f"cannot trace {path}: ptrace is not permitted here (check "
                          f"/proc/sys/kernel/yama/ptrace_scope, or a seccomp policy that "
                          f"forbids it)") from None
    try:
        os.waitpid(proc.pid, 0)  # the stop after the exec
        ptrace.detach(proc.pid, signal.SIGSTOP)
        os.waitpid(proc.pid, os.WUNTRACED)  # stopped, untraced: seize it there
        try:
            ptrace.ptrace(ptrace.PTRACE_SEIZE, proc.pid, 0, options)
        except OSError as e:
            raise TargetError(f"cannot trace {path}: {e.strerror}") from None
        os.kill(proc.pid, signal.SIGCONT)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


@contextlib.contextmanager
def _program_owns_sigint():
    """mdbpy ignores SIGINT while the program runs: Ctrl-C reaches the program from the
    terminal, and stops it there when it is fatal to it."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield old
    finally:
        signal.signal(signal.SIGINT, old)


class Run:
    """A started program and every task mdbpy traces for it, from spawn to its end.

    `stops` and `states` are the Freezer's (live.py reads them): the threads of the followed
    process held in ptrace-stop and how each stopped. `task` is the thread that stopped the
    program; `reason` says why, once it has (None while it runs or if it ended unstopped)."""

    def __init__(self, argv: list[str], path: str | None = None, follow: str = "parent",
                 sigint_ignored: bool = False, mask: set = frozenset()):
        """Start the file `path` (default: argv[0] as resolve() finds it) with argv; the
        program gets SIGINT as mdbpy was given it and the signal mask `mask`."""
        if follow not in FOLLOW_MODES:
            raise TargetError(f"follow_fork_mode must be parent or child, not '{follow}'")
        path = resolve(path or argv[0])
        self.argv0, self.path = argv[0], path  # to start it again (::run after ::kill)
        options = O_TRACECLONE | O_TRACEEXIT | O_EXITKILL
        if follow == "child":
            options |= O_TRACEFORK | O_TRACEVFORK
        self.follow = follow
        # SIGINT as the user started mdbpy (ignored under nohup or &: the program inherits it)
        self._popen = _spawn(path, argv, options, not sigint_ignored, mask)
        self.pid = self._popen.pid
        self.followed: int | None = self.pid  # None once the stop is over
        self.tasks: dict[int, int] = {self.pid: self.pid}  # traced tid -> its process
        self.status: int | None = None  # the started program's wait status, once reaped
        self.stops: dict[int, ptrace.StopEvent] = {}
        self.states: dict[int, str] = {}
        self.task = self.pid
        self.reason: str | None = None
        self.group_stopped = False

    # -- running -----------------------------------------------------------------------------
    def run(self) -> None:
        """Let the program run until the followed process stops at its end, or the started
        program has ended. SIGINT (Ctrl-C, which the terminal sends the program too) is the
        program's meanwhile: mdbpy stops it there if it is fatal, as any other signal."""
        with _program_owns_sigint():
            while self._waiting():
                tid, status = os.waitpid(-1, ptrace.WALL)
                self._event(tid, status)

    def _waiting(self) -> bool:
        """Not stopped yet, and the started program or the followed process still runs (a
        followed child may outlive the parent that started it)."""
        if self.stops:
            return False
        return self.status is None or self.followed in self.tasks.values()

    def _event(self, tid: int, status: int) -> None:
        ev = ptrace.decode(status)
        if not ev.stopped:
            self.tasks.pop(tid, None)
            if tid == self.pid:
                self._reaped(status)
            return
        if tid not in self.tasks and not self._adopt(tid):
            return
        pid = self.tasks[tid]
        if ev.event == EVENT_EXIT:
            if pid == self.followed and self._ends_process(tid):
                self._hold(tid, ev, f"stopped at its exit ({describe_status(self._msg(tid))})")
                return
            _cont(tid)
        elif ev.event == ptrace.PTRACE_EVENT_STOP and ev.sig in ptrace.STOP_SIGNALS:
            ptrace.ptrace(PTRACE_LISTEN, tid)  # a job-control stop: stay stopped until SIGCONT
        elif ev.event == 0 and pid == self.followed and _fatal(tid, ev.sig):
            self._hold(tid, ev, f"stopped by signal {signal_name(ev.sig)} in thread {tid}, "
                                f"before its delivery")
        else:
            _cont(tid, ev.sig if ev.event == 0 else 0)

    def _reaped(self, status: int) -> None:
        """The started program is gone: its wait status, told to its Popen too (which would
        otherwise wait for it again, and might take another's status)."""
        self.status = status
        self._popen.returncode = exit_code(status)

    def _adopt(self, tid: int) -> bool:
        """A task reporting for the first time (its creator's event may come later): a thread
        of a traced process is kept; a new process is followed when it is a fork of the
        followed process in child mode, and let go otherwise. False when it was let go."""
        for pid in set(self.tasks.values()):  # one or two: cheaper than parsing /proc's status
            if os.path.exists(f"/proc/{pid}/task/{tid}"):
                self.tasks[tid] = pid
                return True
        st = ptrace.status_numbers(tid, ("Tgid", "PPid"))
        if st is None:  # gone already: its exit report follows
            return False
        pid = st["Tgid"]
        if self.follow == "child" and st["PPid"] == self.followed:
            self.followed = pid
            self.tasks[tid] = pid
            return True
        try:
            ptrace.detach(tid)
        except ProcessLookupError:
            pass
        return False

    def _msg(self, tid: int) -> int:
        """PTRACE_GETEVENTMSG: for an exit stop, the wait status the thread exits with."""
        value = ctypes.c_ulong()
        ptrace.ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(value))
        return value.value

    def _ends_process(self, tid: int) -> bool:
        """The exiting thread takes its process with it: it is the last thread, or it called
        exit_group(2) (a thread calling exit(2) alone leaves the others running)."""
        pid = self.tasks[tid]
        if sum(p == pid for p in self.tasks.values()) == 1:
            return True
        return ptrace.getregs(tid)["orig_rax"] == SYS_EXIT_GROUP

    def _hold(self, tid: int, ev: ptrace.StopEvent, reason: str) -> None:
        """The stop: tid is held, and the followed process's other threads are interrupted and
        held too (at an exit, those exit_group is ending stop at their own exit, or are
        reaped)."""
        self.task, self.reason = tid, reason
        self.stops[tid] = ev
        pid = self.tasks[tid]
        others = [t for t, p in self.tasks.items() if p == pid and t != tid]
        for t in others:
            try:
                ptrace.interrupt(t)
            except ProcessLookupError:
                pass
        for t in others:
            self._settle(t)

    def _settle(self, tid: int) -> None:
        """Wait for an interrupted thread to stop (kept in `stops`, with any signal it was
        about to take) or to exit (reaped). A leader that has exited already reports only once
        its whole process is gone, so it is not waited for; nor, past STOP_TIMEOUT, a thread
        in uninterruptible sleep (it is shown without registers)."""
        pid = self.tasks[tid]
        deadline = time.monotonic() + ptrace.STOP_TIMEOUT
        while time.monotonic() < deadline:
            ev = ptrace.wait_stop(tid, 0.05)
            if ev is not None:
                if ev.stopped:
                    self.stops[tid] = ev
                else:
                    self.tasks.pop(tid, None)
                return
            if tid == pid and ptrace.task_state(pid, tid) in ("", "Z", "X"):
                return

    # -- ending --------------------------------------------------------------------------------
    def finish(self) -> int:
        """Let the program go on to its end (the exit completes, the held signal is
        delivered) and return its wait status. Processes that outlive it (daemons it left
        behind) are let go, as they would run on without mdbpy."""
        self.followed = None
        self._resume()
        self.run()
        self._let_go()
        return self.status

    def _resume(self, deliver: bool = True) -> None:
        """Resume the held threads, with the signal each was stopped for if deliver."""
        for tid, ev in self.stops.items():
            _cont(tid, ev.pending_signal if deliver else 0)
        self.stops.clear()

    def _let_go(self) -> None:
        for tid in list(self.tasks):
            try:
                ptrace.interrupt(tid)
            except ProcessLookupError:
                continue
            ev = ptrace.wait_stop(tid, 1.0)
            if ev is not None and ev.stopped:
                try:
                    ptrace.detach(tid, ev.pending_signal)
                except ProcessLookupError:
                    pass
        self.tasks.clear()

    def kill(self) -> None:
        """End every traced process (SIGKILL) and collect the exits; idempotent. A process
        already in exit_group takes no new signal, so the held threads are resumed as well."""
        for pid in set(self.tasks.values()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._resume(deliver=False)
        while self.tasks:
            try:
                tid, status = os.waitpid(-1, ptrace.WALL)
            except ChildProcessError:
                break
            ev = ptrace.decode(status)
            if ev.stopped:  # a stop queued before the kill: it dies as it resumes
                _cont(tid)
                continue
            self.tasks.pop(tid, None)
            if tid == self.pid:
                self._reaped(status)

    # the Freezer's names, which LiveTarget calls: closing a target that was not finished
    # (an error, a signal to mdbpy) kills the program, which must not live on unwatched
    reap = release = kill


class Ended(TargetError):
    """The program ended without a stop (SIGKILL stops nothing): there is nothing to look at,
    but its wait status is still the one mdbpy passes on."""

    def __init__(self, run: Run):
        super().__init__(f"process {run.pid} ended before it could be stopped "
                         f"({describe_status(run.status)})")
        self.status = run.status


class SpawnTarget(LiveTarget):
    """A program started by mdbpy and stopped at its end: a LiveTarget held by a Run.

    Closing it without finish() (an error, a signal to mdbpy) kills the program (Run.release);
    finish() lets it complete and gives its wait status."""

    def __init__(self, argv: list[str], path: str | None = None, follow: str = "parent",
                 writable: bool = False):
        run = None
        with _program_owns_sigint() as before:
            try:
                # a signal to mdbpy (SIGTERM) waits until the started program is known to the
                # Run, so that the Run can end it
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
                try:
                    run = Run(argv, path, follow, before == signal.SIG_IGN, mask)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                run.run()
                if not run.stops:
                    raise Ended(run)
                super().__init__(run.followed, writable=writable, held=run)
            except BaseException:
                if run is not None:
                    run.kill()
                raise
        self.run = run

    def threads(self):
        """The thread that stopped the program first (as a core lists the thread that
        dumped it), so $C and ::regs show it."""
        threads = super().threads()
        return sorted(threads, key=lambda t: t.tid != self.run.task)

    def _run_state(self) -> str:
        if self._gone is None and self.run.reason:
            return f"process {self.run.reason}"
        return super()._run_state()

    def finish(self) -> int:
        """Let the program complete; its wait status. Idempotent."""
        self._close_fd()
        self.run.finish()
        self._gone = f"process {self.run.pid} has completed ({describe_status(self.run.status)})"
        return self.run.status

    def release(self, leave_stopped: bool = False) -> None:
        raise TargetError(f"process {self.pid} was started by mdbpy, which lets it complete "
                          f"when the session ends; quit ($q) for that, or ::kill it")
