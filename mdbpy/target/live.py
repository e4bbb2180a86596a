"""The live-process target: /proc/PID for maps, memory and threads; ptrace to freeze and for
registers.

By default every thread is stopped (PTRACE_SEIZE + PTRACE_INTERRUPT, see ptrace.py) so reads are
consistent and nothing moves while mdbpy looks; close() detaches and the process carries on as if
nothing happened. With stop=False (`-o nostop`) mdbpy never ptraces: memory comes from
/proc/PID/mem of the running process and registers are unavailable.

Memory is read with pread(2) on /proc/PID/mem, which copies across page and mapping boundaries
in one call, so a read of N bytes is one system call unless it is huge or crosses a hole.
"""

from __future__ import annotations

import bisect
import errno
import os
import signal

from mdbpy.errors import ReadError, TargetError, WriteError
from mdbpy.target import ptrace
from mdbpy.target.base import Mapping, Target, Thread

CHUNK = 64 << 20  # bytes per pread: large, but bounds the buffer one system call fills
# pread(2) rejects file offsets with the top bit set, so kernel addresses (e.g. [vsyscall]) cannot
# be read through /proc/PID/mem; they are reported as unreadable rather than attempted.
MAX_OFFSET = 1 << 63
STATE_NAMES = {
    "R": "running", "S": "sleeping", "D": "disk sleep", "T": "stopped", "t": "tracing stop",
    "Z": "zombie", "X": "dead", "I": "idle", "P": "parked", "W": "waking",
}


class NoRegisters(dict):
    """An empty register set that explains itself: `regs['rip']` raises a one-line TargetError
    instead of a KeyError, so a command asking for registers tells the user why there are none."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def __missing__(self, key):
        raise TargetError(self.reason)


class LiveTarget(Target):
    """A running process, by pid. stop=False inspects without stopping (no ptrace at all)."""

    kind = "live"
    reads_through_kernel = True

    def __init__(self, pid: int, stop: bool = True, writable: bool = False, held=None):
        """held: a process mdbpy already holds in ptrace-stop (a program it started, see
        spawn.py), with the Freezer's `stops`, `states`, `group_stopped`, `release()` and
        `reap()`, and `task`: the thread through which /proc shows its memory (its leader may
        have exited already)."""
        self.pid = pid
        self.stop = stop
        self.writable = writable
        self.task = held.task if held is not None else pid
        self._gone: str | None = None  # why the process can no longer be read, once it cannot
        self._maps: list[Mapping] | None = None
        self._starts: list[int] = []
        self._threads: list[Thread] | None = None
        self._freezer: ptrace.Freezer | None = None
        self._fd: int | None = None
        if held is not None:
            self._freezer = held
            self._fd = self._open_mem()
            return
        self._check_openable()
        self._fd = self._open_mem()
        if stop:
            self._freezer = ptrace.Freezer(pid)
            try:
                self._freezer.freeze()
            except OSError as e:
                self._close_fd()
                raise self._attach_error(e) from None
            except BaseException:
                self._close_fd()
                raise

    # -- opening ----------------------------------------------------------------------------
    def _check_openable(self) -> None:
        """Fail early, with the fix in the message, for pids that cannot be debugged."""
        status = ptrace.proc_status(self.pid)
        if status is None:
            raise TargetError(f"process {self.pid} not found")
        tgid = status.get("Tgid", str(self.pid))
        if tgid != str(self.pid):
            raise TargetError(f"{self.pid} is a thread of process {tgid}; use -p {tgid}")
        if status.get("State", "").startswith(("Z", "X")):
            raise TargetError(f"process {self.pid} is a zombie (it has exited and its parent has "
                              f"not reaped it); there is nothing left to debug")
        if "VmSize" not in status:  # no address space: a kernel thread
            raise TargetError(f"process {self.pid} is a kernel thread; mdbpy debugs user "
                              f"processes")
        if self.stop and self.pid == os.getpid():
            raise TargetError("mdbpy cannot stop itself; use -o nostop")

    def _open_mem(self) -> int:
        try:
            return os.open(self._proc("mem"), os.O_RDWR if self.writable else os.O_RDONLY)
        except FileNotFoundError:
            raise TargetError(f"process {self.pid} not found") from None
        except PermissionError:
            raise TargetError(self._permission_message("read the memory of")) from None
        except OSError as e:
            raise TargetError(f"cannot open /proc/{self.pid}/mem: {e.strerror}") from None

    def _attach_error(self, e: OSError) -> TargetError:
        if e.errno == errno.ESRCH:
            return TargetError(f"process {self.pid} has exited")
        if e.errno == errno.EPERM:
            tracer = (ptrace.proc_status(self.pid) or {}).get("TracerPid", "0")
            if tracer != "0":
                return TargetError(f"process {self.pid} is already traced by process {tracer} "
                                   f"({_comm(int(tracer))}); detach that debugger first, or "
                                   f"use -o nostop")
            return TargetError(self._permission_message("attach to"))
        return TargetError(f"cannot attach to process {self.pid}: {e.strerror}")

    def _permission_message(self, what: str) -> str:
        return (f"permission denied to {what} process {self.pid}: run mdbpy as the same user, "
                f"check /proc/sys/kernel/yama/ptrace_scope (set 0) or grant CAP_SYS_PTRACE")

    def _proc(self, name: str) -> str:
        """/proc's file `name` of the process as seen by thread `task` (its memory, maps)."""
        if self.task == self.pid:
            return f"/proc/{self.pid}/{name}"
        return f"/proc/{self.pid}/task/{self.task}/{name}"

    # -- liveness ---------------------------------------------------------------------------
    def _alive(self) -> bool:
        """The process exists and still has its address space. A killed process drops its
        memory before it turns Z, and reads fail in between: that is an exit too, not a bad
        address (statm is all zeros once the memory is gone)."""
        if ptrace.task_state(self.pid, self.task) in ("", "Z", "X"):
            return False
        try:
            with open(self._proc("statm")) as f:
                return f.read(256).split()[0] != "0"
        except (OSError, IndexError):
            return False

    def _check(self) -> None:
        """Raise the reason the process cannot be read, if there is one."""
        if self._gone is None and self._fd is None:
            self._gone = f"process {self.pid} is no longer attached"
        if self._gone is not None:
            raise TargetError(self._gone)

    def image_fd(self) -> int:
        """A new descriptor of the /proc/PID/mem this target has open (the caller closes it),
        for code that reads it itself (mdbpy.heap.gather's compiled reads; the offset is the
        address): the same process whatever has its pid by now, where opening the path again
        could read another process that reused the pid. OSError once closed or gone."""
        try:
            self._check()
        except TargetError as e:
            raise OSError(str(e)) from None
        return os.dup(self._fd)

    def _died(self) -> TargetError:
        self._gone = f"process {self.pid} has exited"
        self._maps, self._threads = None, None
        return TargetError(self._gone)

    # -- mappings ---------------------------------------------------------------------------
    def mappings(self) -> list[Mapping]:
        self._check()
        if self._maps is None:
            try:
                with open(self._proc("maps")) as f:
                    text = f.read()
            except OSError:
                raise self._died() from None
            maps = [m for m in map(parse_maps_line, text.splitlines()) if m is not None]
            if not maps and not self._alive():
                raise self._died()
            self._maps = sorted(maps, key=lambda m: m.start)
            self._starts = [m.start for m in self._maps]
        return list(self._maps)

    def _covered(self, addr: int, size: int) -> int:
        """The first address of [addr, addr+size) that no mapping covers (addr+size if none).
        (It runs on every read: mappings() is called only to fill the cache, never for its
        copy of a list that has 10,000 entries in a busy process.)"""
        if self._maps is None:
            self.mappings()
        cur, end = addr, addr + size
        i = bisect.bisect_right(self._starts, cur) - 1
        while cur < end:
            if i < 0 or i >= len(self._maps) or not self._maps[i].contains(cur):
                return cur
            cur = self._maps[i].end
            i += 1
        return end

    # -- memory -----------------------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        self._check()
        if addr + size > MAX_OFFSET:
            raise ReadError(addr, size, "kernel address, not readable through /proc/PID/mem")
        hole = self._covered(addr, size)
        if hole < addr + size and not self.stop:
            self._maps = None  # a running process may have mapped it since: look again
            hole = self._covered(addr, size)
        if hole < addr + size:
            # refuse before allocating: a wild size must not become a huge buffer
            raise ReadError(hole, addr + size - hole, "no mapping")
        parts = []  # one pread is the common case: its bytes are returned as they are
        cur, end = addr, addr + size
        while cur < end:
            want = min(CHUNK, end - cur)
            try:
                got = os.pread(self._fd, want, cur)
            except OSError as e:
                got, err = b"", e.strerror
            else:
                err = "Input/output error"
            if not got:
                if not self._alive():
                    raise self._died()
                raise ReadError(cur, end - cur, err)
            parts.append(got)
            cur += len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_rows(self, addrs, size: int):
        """Many small reads in few system calls (vmread.py); the rows it cannot copy whole
        are left to read(), which says what is missing."""
        from mdbpy.target import vmread

        self._check()
        return vmread.read_rows(self.pid, addrs, size)

    def write(self, addr: int, data: bytes) -> None:
        if not self.writable:
            super().write(addr, data)
        self._check()
        if addr + len(data) > MAX_OFFSET:
            raise WriteError(addr, len(data), "kernel address, not writable through /proc/PID/mem")
        hole = self._covered(addr, len(data))
        if hole < addr + len(data):
            raise WriteError(hole, addr + len(data) - hole, "no mapping")
        view = memoryview(data)
        cur = addr
        while view:
            try:
                n = os.pwrite(self._fd, view, cur)
            except OSError as e:
                n, err = 0, e.strerror
            else:
                err = "Input/output error"
            if n <= 0:
                if not self._alive():
                    raise self._died()
                raise WriteError(cur, len(view), err)
            view = view[n:]
            cur += n

    # -- threads ----------------------------------------------------------------------------
    def threads(self) -> list[Thread]:
        """Every thread, the main one first; states are those seen before mdbpy stopped them."""
        self._check()
        if self._threads is None:
            try:
                tasks = ptrace.task_states(self.pid)
            except OSError:
                raise self._died() from None
            if not tasks:
                raise self._died()
            seen = self._freezer.states if self._freezer else {}
            threads = []
            for tid, state in sorted(tasks, key=lambda t: (t[0] != self.pid, t[0])):
                if state == "t" and tid in seen:
                    state = seen[tid]
                threads.append(Thread(tid, _comm(self.pid, tid), self._regs(tid),
                                      f"{state} ({STATE_NAMES.get(state, 'unknown')})"))
            self._threads = threads
        return list(self._threads)

    def _regs(self, tid: int) -> dict[str, int]:
        if self._freezer is None:
            return NoRegisters(f"registers of process {self.pid} are not available with "
                               f"-o nostop (the process is running)")
        if tid not in self._freezer.stops:
            return NoRegisters(f"thread {tid} appeared after mdbpy stopped the process; "
                               f"its registers are not available")
        try:
            return ptrace.getregs(tid)
        except OSError as e:
            return NoRegisters(f"cannot read the registers of thread {tid}: {e.strerror}")

    # -- facts ------------------------------------------------------------------------------
    def auxv(self) -> dict[int, int]:
        self._check()
        try:
            with open(self._proc("auxv"), "rb") as f:
                raw = f.read(1 << 16)
        except OSError:
            raise self._died() from None
        out = {}
        for i in range(0, len(raw) - 15, 16):
            key = int.from_bytes(raw[i:i + 8], "little")
            if key == 0:  # AT_NULL ends the vector
                break
            out[key] = int.from_bytes(raw[i + 8:i + 16], "little")
        return out

    def exe_path(self) -> str | None:
        """The executable; if it was deleted or replaced, /proc/PID/exe still opens the original."""
        try:
            path = os.readlink(self._proc("exe"))
        except OSError:
            return None
        if path.endswith(" (deleted)") or not os.path.exists(path):
            return self._proc("exe")
        return path

    def file_path(self, path: str) -> str:
        """A mapped file as this machine sees it: through /proc/PID/root when the process runs
        in another mount namespace (a container) and the path does not exist here."""
        if os.path.exists(path):
            return path
        alt = f"/proc/{self.pid}/root{path}"
        return alt if os.path.exists(alt) else path

    def cmdline(self) -> list[str]:
        try:
            with open(self._proc("cmdline"), "rb") as f:
                raw = f.read(1 << 16)
        except OSError:
            return []
        return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]

    def describe(self) -> str:
        return f"PID {self.pid}"

    def status_lines(self) -> list[str]:
        lines = [f"debugging PID {self.pid} (64-bit)"]
        exe = self.exe_path()
        if exe:
            lines.append(f"file: {exe}")
        argv = self.cmdline()
        if argv:
            lines.append(f"initial argv: {' '.join(argv)}"[:4096])
        lines.append("threading model: native threads")
        lines.append(f"status: {self._run_state()}")
        return lines

    def _run_state(self) -> str:
        if self._gone is not None:
            return self._gone
        if self._fd is None:
            return f"process {self.pid} is no longer attached"
        if not self.stop:
            return "process is running (-o nostop)"
        if self._freezer is not None and self._freezer.group_stopped:
            return "process is stopped by mdbpy (it was already stopped by job control)"
        return "process is stopped by mdbpy"

    # -- lifetime ---------------------------------------------------------------------------
    def refresh(self) -> None:
        self._maps = None
        self._threads = None

    def release(self, leave_stopped: bool = False) -> None:
        """Detach now and let the process run; later reads fail saying so (mdb's ::release).

        leave_stopped (::release -a) queues a SIGSTOP first: the threads dequeue it as soon as
        they are detached, so the process ends up in an ordinary job-control stop.
        """
        self._check()
        if leave_stopped:
            os.kill(self.pid, signal.SIGSTOP)
        self.close()
        self._gone = (f"no process active: process {self.pid} was released; "
                      f"attach again with mdbpy -p {self.pid}")

    def kill(self) -> None:
        """SIGKILL the process and collect its exit; later reads fail saying so (mdb's ::kill)."""
        self._check()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._freezer is not None:
            self._freezer.reap()
        self.close()
        self._gone = f"no process active: process {self.pid} was killed"

    def close(self) -> None:
        """Detach every thread (resuming the process) and close /proc/PID/mem. Idempotent."""
        if self._freezer is not None:
            self._freezer.release()
        self._close_fd()
        self._maps, self._threads = None, None

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def parse_maps_line(line: str) -> Mapping | None:
    """One line of /proc/PID/maps; pseudo-names such as [heap] are kept as the path."""
    parts = line.split(None, 5)
    if len(parts) < 5 or "-" not in parts[0]:
        return None
    start, _, end = parts[0].partition("-")
    try:
        return Mapping(int(start, 16), int(end, 16), parts[1], int(parts[2], 16), parts[3],
                       int(parts[4]), parts[5] if len(parts) > 5 else "")
    except ValueError:
        return None


def _comm(pid: int, tid: int | None = None) -> str:
    path = f"/proc/{pid}/comm" if tid is None else f"/proc/{pid}/task/{tid}/comm"
    try:
        with open(path) as f:
            return f.read(256).strip()
    except OSError:
        return "?"
