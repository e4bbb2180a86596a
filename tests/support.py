"""Test support: compile C fixtures, start them as real processes, make core files, run mdbpy.

Fixtures print a line starting with READY and key=value facts when set up; Running.info holds
them. Every started process is killed when its test ends, whatever happened.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


def compile_fixture(name: str, out_dir: Path, flags=("-g", "-O0"), out_name: str | None = None,
                    libs=("-pthread",)) -> Path:
    """Compile fixtures/<name>.c with gcc into out_dir; returns the executable's path."""
    src = FIXTURES / f"{name}.c"
    exe = Path(out_dir) / (out_name or name)
    cmd = ["gcc", *flags, "-o", str(exe), str(src), *libs]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


class Running:
    """A started fixture process."""

    def __init__(self, proc: subprocess.Popen, info: dict[str, str]):
        self.proc = proc
        self.pid = proc.pid
        self.info = info

    def addr(self, key: str) -> int:
        return int(self.info[key], 16)

    def proc_status(self) -> dict[str, str]:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
        return out

    def thread_states(self) -> list[str]:
        states = []
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, ProcessLookupError):  # a thread ended meanwhile
                continue
        return states

    def assert_untouched(self, timeout: float = 10.0) -> None:
        """The process runs, is not traced or stopped, and its data checksum is unchanged."""
        assert self.proc.poll() is None, "target exited"
        deadline = time.time() + timeout
        while True:  # ptrace detach is asynchronous; allow the kernel a moment
            st = self.proc_status()
            states = self.thread_states()
            if st["TracerPid"] == "0" and not any(s in "tT" for s in states):
                break
            assert time.time() < deadline, f"target still traced/stopped: {st['TracerPid']} {states}"
            time.sleep(0.05)
        if "sum" in self.info:
            os.kill(self.pid, signal.SIGUSR1)
            line = read_line(self.proc, timeout)
            assert line.split() == ["SUM", self.info["sum"]], line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for s in (self.proc.stdout, self.proc.stderr):
            if s:
                s.close()


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the process's stdout, or fail after timeout seconds."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError("fixture did not answer in time")
        return proc.stdout.readline()
    finally:
        sel.close()


def start_fixture(exe: Path, *args, env=None, timeout: float = 20.0) -> Running:
    proc = subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = read_line(proc, timeout)
    except AssertionError:
        proc.kill()
        raise
    if not line.startswith("READY"):
        proc.kill()
        raise AssertionError(f"fixture said {line!r}, stderr {proc.stderr.read()!r}")
    info = dict(re.findall(r"(\w+)=(\S+)", line))
    return Running(proc, info)


def gcore(pid: int, prefix: Path) -> Path:
    """A core of a live process written by gdb's gcore."""
    subprocess.run(["gcore", "-o", str(prefix), str(pid)], check=True, capture_output=True,
                   timeout=120)
    return Path(f"{prefix}.{pid}")


def proc_maps(pid: int) -> list[tuple[int, int, str, int, str]]:
    """(start, end, perms, offset, path) for each line of /proc/PID/maps: the oracle for
    mapping and load-bias assertions."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            a, b = (int(x, 16) for x in parts[0].split("-"))
            out.append((a, b, parts[1], int(parts[2], 16),
                        parts[5].strip() if len(parts) > 5 else ""))
    return out


def mapped_base(pid: int, path) -> int:
    """Start of the file's offset-0 mapping: the load bias of an object whose first PT_LOAD
    is at vaddr 0 (PIE executables, shared libraries)."""
    real = os.path.realpath(path)
    return min(a for a, _b, _perms, off, p in proc_maps(pid)
               if off == 0 and p and os.path.realpath(p) == real)


# The basic fixture's heap list: (value, tag) of each node, in list order.
BASIC_NODES = [(0x1000 + i, f"node{i}") for i in range(5)]


def basic_list(target, head: int) -> list[tuple[int, str]]:
    """(value, tag) of each `struct node` from head, following next pointers in `target`."""
    out = []
    while head and len(out) < 100:
        nxt, value, tag = struct.unpack("<QQ16s", target.read(head, 32))
        out.append((value, tag.rstrip(b"\0").decode()))
        head = nxt
    return out


def wait_syscalls(pid: int, want: dict[int, int], timeout: float = 20.0) -> None:
    """Until each thread tid of `want` sits in the system call numbered want[tid] (from
    /proc/PID/task/TID/syscall): a fixture that prints READY just before blocking is then
    known to be blocked, so its stacks are the same in every look at it."""
    deadline = time.time() + timeout
    while True:
        now = {}
        for tid in want:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                now[tid] = f.read().split()[0]
        if all(now[t] == str(n) for t, n in want.items()):
            return
        assert time.time() < deadline, f"threads not parked in their system calls: {now}"
        time.sleep(0.01)


def without_args(line: str) -> str:
    """A $C / ::stack -v line with its arguments dropped, `fp sym+off()` (and the ` at
    file:line` of -l kept), to compare with what $c prints."""
    return re.sub(r"\((.*)\)( at [^()]*)?$", r"()\2", line)


STACKS_FLAGS = ("-O2", "-fomit-frame-pointer", "-g")  # only CFI can unwind this code
SYS_READ, SYS_PAUSE = 0, 34


def start_stacks(exe: Path) -> Running:
    """A `stacks` fixture with its main thread in pause() and its reader thread and its
    signalled thread (inside a signal handler) in read()."""
    r = start_fixture(exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE, int(r.info["reader"]): SYS_READ,
                              int(r.info["signalled"]): SYS_READ})
    except BaseException:
        r.stop()
        raise
    return r


def bundled_modules() -> list[str]:
    """mdbpy's own modules, as its pyproject.toml declares them (entry-point group
    mdbpy.modules), in the order mdbpy lists installed modules: core first, then by name. The
    tests that list modules take them from here, so a new bundled allocator module changes
    nothing outside its own folder but its one declaration."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        names = tomllib.load(f)["project"]["entry-points"]["mdbpy.modules"]
    return ["core", *sorted(set(names) - {"core"})]


def mdbpy_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "mdbpy", *map(str, args)]


# Started by a small Python of its own: a process forked straight from this test process
# counts this process's resident memory, which fork shares with it, in its ru_maxrss (the
# kernel keeps the pre-exec image's high-water mark), so a long test session's own growth
# would be measured as mdbpy's.
_MEASURE = """import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_measured(*args) -> tuple[str, str, int, int]:
    """(stdout, stderr, exit status, peak RSS in KiB) of one mdbpy run, its peak its own."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = Path(d) / "result"
        with open(Path(d) / "out", "w+") as out, open(Path(d) / "err", "w+") as err:
            subprocess.run([sys.executable, "-c", _MEASURE, str(result), *mdbpy_cmd(*args)],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=err, check=True)
            out.seek(0)
            err.seek(0)
            status, peak = map(int, result.read_text().split())
            return out.read(), err.read(), status, peak


def run_mdbpy(*args, input: str | None = None, timeout: float = 120, env=None):
    """Run the mdbpy CLI as a user would; returns the CompletedProcess (text)."""
    e = dict(os.environ)
    e.pop("NO_COLOR", None)
    if env:
        e.update(env)
    return subprocess.run(mdbpy_cmd(*args), input=input, capture_output=True, text=True,
                          timeout=timeout, env=e, stdin=None if input is not None else
                          subprocess.DEVNULL)


# -- an mdbpy session driven through pipes (exit-path and target-safety tests) ----------------

STOPPED = "status: process is stopped by mdbpy"


def one_line_stderr(stderr: str) -> str:
    """The single line mdbpy may print on stderr ('' for none); fails on a traceback or more."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) <= 1, stderr
    return lines[0] if lines else ""


class PipedSession:
    """mdbpy reading commands from a pipe, with unbuffered output to synchronise on.

    Tests that signal mdbpy synchronise on what it prints (the `status:` line of ::status proves
    it has attached and is back reading stdin) or on how much it has read (read_bytes()), never
    on sleeps.
    """

    def __init__(self, *args, env=None):
        e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(mdbpy_cmd("-S", *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                     env=e)
        self.pending = b""  # stdout read but not yet consumed as lines

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())

    def wait_for(self, prefix: str) -> str:
        """Read stdout lines until one starts with prefix (each wait bounded by a timeout).

        Reads the pipe directly: a buffered reader could hold lines that select() cannot see.
        """
        import select

        fd = self.proc.stdout.fileno()
        for _ in range(1 << 20):
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                if line.decode().startswith(prefix):
                    return line.decode()
            ready, _, _ = select.select([fd], [], [], 60)
            assert ready, f"mdbpy printed no {prefix!r} line in time"
            chunk = os.read(fd, 65536)
            assert chunk, f"mdbpy ended before printing {prefix!r}: {self.proc.stderr.read()}"
            self.pending += chunk
        raise AssertionError(f"no line starting with {prefix!r}")

    def attached(self) -> None:
        self.send("::status\n")
        assert self.wait_for("status:") == STOPPED

    def wait_reading_stdin(self, timeout: float = 60) -> None:
        """Until mdbpy's main thread is blocked in read(2) on its stdin (/proc/PID/syscall):
        a signal sent then finds it waiting for a command, not still finishing the last."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(f"/proc/{self.proc.pid}/syscall") as f:
                if f.read().split()[:2] == ["0", "0x0"]:
                    return
            time.sleep(0.01)
        raise AssertionError("mdbpy never waited on its stdin")

    def read_bytes(self) -> int:
        """Bytes mdbpy has read with read(2)/pread(2) so far (rchar of /proc/PID/io): a live
        target's memory is read that way, so this shows how far a scan has got."""
        with open(f"/proc/{self.proc.pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
        raise AssertionError("no rchar in /proc/PID/io")

    def wait_read(self, nbytes: int, timeout: float = 120) -> None:
        """Until mdbpy has read nbytes more than it had when called (it must still be running)."""
        base = self.read_bytes()
        deadline = time.time() + timeout
        while self.read_bytes() - base < nbytes:
            assert self.proc.poll() is None, f"mdbpy ended first: {self.proc.stderr.read()}"
            assert time.time() < deadline, "mdbpy did not read enough in time"
            time.sleep(0.002)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Close stdin, drain stdout, wait for the exit; (exit status, the stderr line or '')."""
        # communicate() closes stdin and drains stdout, so a big output cannot block the exit
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, one_line_stderr(err.decode())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- an mdbpy session in the test's own process --------------------------------------------

from contextlib import contextmanager  # noqa: E402


@contextmanager
def engine_session(pid: int | None = None, core=None, exe=None, **settings):
    """A Session with its Engine on the live process pid, or on a core (with its
    executable), with session settings (e.g. ptmalloc.locate='heuristic'); closed after."""
    import io

    from mdbpy.lang.engine import Engine
    from mdbpy.session import Session

    if pid is not None:
        from mdbpy.target.live import LiveTarget

        target = LiveTarget(pid)
    else:
        from mdbpy.target.core import open_file_target

        target = open_file_target(str(core), exe=None if exe is None else str(exe))
    s = Session(target, out=io.StringIO(), err=io.StringIO())
    s.settings.update(settings)
    Engine(s)
    try:
        yield s
    finally:
        s.close()


def run_in(s, cmd: str) -> str:
    """The output of one command line run in an engine_session (its stdout, freshly)."""
    s.out.seek(0)
    s.out.truncate()
    s.engine.run_string(cmd)
    return s.out.getvalue()
