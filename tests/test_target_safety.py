"""A live target survives mdbpy, whichever way mdbpy leaves: the exit-path suite of issue 8.

The target is fixtures/selfsum.c: a million glibc chunks (~80 MB) that point at each other, so
::findleaks takes seconds, and a checksum the process computes itself over its data, bss, heap
and a stack buffer. After every way out (quit, EOF, -e; SIGINT, SIGTERM, SIGHUP and SIGKILL of
mdbpy in the middle of a ::findleaks; the target dying under a long walk or a findleaks; an
internal error in a dcmd) the process must run (state R or S), be untraced (TracerPid 0), report the checksum it
reported at start, and keep doing so after a fresh attach. Writes reach it only with -w, and then
exactly the one asked for.

Signals are sent mid-scan by watching how much mdbpy has read from the target (rchar of
/proc/PID/io): a scan reads the heap twice, about 160 MB, so "48 MiB read" is well inside it.
"""

from __future__ import annotations

import os
import signal

import pytest

from support import (STOPPED, PipedSession, compile_fixture, one_line_stderr, read_line,
                     run_mdbpy, start_fixture)

NODES = 1_000_000
MID_SCAN = 48 << 20  # bytes of target memory read: inside a ::findleaks of the fixture


@pytest.fixture(scope="module")
def selfsum_exe(build_dir):
    return compile_fixture("selfsum", build_dir, flags=("-g", "-O2"))


class SelfSum:
    """The started fixture and what it said about itself at start."""

    def __init__(self, running):
        self.running = running
        self.pid = running.pid
        self.sum = running.info["sum"]

    def addr(self, key: str) -> int:
        return self.running.addr(key)

    def report(self) -> tuple[str, int]:
        """(checksum, poke) computed by the process now (it answers SIGUSR1)."""
        os.kill(self.pid, signal.SIGUSR1)
        words = read_line(self.running.proc, 60).split()
        assert words[0::2] == ["SUM", "POKE"], words
        return words[1], int(words[3], 16)

    def assert_free(self) -> None:
        """Running or sleeping, not stopped, not traced. A detach completes asynchronously,
        so the tracer's last word is awaited by the exit of mdbpy (already reaped here)."""
        assert self.running.proc.poll() is None, "target exited"
        st = self.running.proc_status()
        assert st["TracerPid"] == "0", st["TracerPid"]
        assert set(self.running.thread_states()) <= {"R", "S"}, self.running.thread_states()

    def assert_intact(self, poke: int = 0) -> None:
        """Free, unchanged, and still so after a fresh look by another mdbpy."""
        self.assert_free()
        assert self.report() == (self.sum, poke)
        r = run_mdbpy("-S", "-p", self.pid, "-e", f"{self.addr('head'):x}::list -n 2")
        assert (r.returncode, one_line_stderr(r.stderr)) == (0, "")
        assert r.stdout.split() == [f"0x{self.addr('head'):x}",
                                    f"0x{self.addr('head') + 0x50:x}"]
        self.assert_free()
        assert self.report() == (self.sum, poke)


@pytest.fixture
def target(selfsum_exe):
    running = start_fixture(selfsum_exe, NODES)
    try:
        yield SelfSum(running)
    finally:
        running.stop()


@pytest.fixture
def session(target):
    started = []

    def start(*args) -> PipedSession:
        s = PipedSession("-p", target.pid, *args)
        started.append(s)
        s.attached()
        return s

    yield start
    for s in started:
        s.kill()


def during_findleaks(s: PipedSession) -> None:
    """Start a ::findleaks and return once it is well into reading the heap."""
    s.send("::findleaks\n")
    s.wait_read(MID_SCAN)


# -- leaving normally ---------------------------------------------------------------------

@pytest.mark.parametrize("how", ["quit", "eof", "dash_e"])
def test_normal_exits_after_reading(target, how):
    head = target.addr("head")
    cmds = f"::mappings\n{head:x}::list -n 3\n{head:x}/4J\n"
    if how == "dash_e":
        r = run_mdbpy("-S", "-p", target.pid, "-e", cmds.replace("\n", ";"))
    else:
        r = run_mdbpy("-S", "-p", target.pid, input=cmds + ("$q\n::status\n" if how == "quit"
                                                             else ""))
    assert (r.returncode, one_line_stderr(r.stderr)) == (0, "")
    assert STOPPED not in r.stdout  # nothing after $q ran
    assert f"0x{head + 0xa0:x}\n" in r.stdout
    target.assert_intact()


# -- signals in the middle of a long scan --------------------------------------------------

def test_sigint_during_findleaks_aborts_the_command_only(target, session):
    s = session()
    during_findleaks(s)
    s.proc.send_signal(signal.SIGINT)
    s.attached()  # the session goes on, the process still held
    assert s.finish() == (0, "mdbpy: findleaks: interrupted; no results kept")
    target.assert_intact()


@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGTERM, 128 + signal.SIGTERM, "mdbpy: terminated by SIGTERM"),
    (signal.SIGHUP, 128 + signal.SIGHUP, "mdbpy: terminated by SIGHUP"),
    (signal.SIGKILL, -signal.SIGKILL, ""),
])
def test_mdbpy_signalled_during_findleaks(target, session, sig, status, message):
    s = session()
    during_findleaks(s)
    s.proc.send_signal(sig)
    assert s.finish() == (status, message)
    target.assert_intact()


# -- the target dies under mdbpy -----------------------------------------------------------

def assert_killed(target) -> None:
    assert target.running.proc.wait(timeout=60) == -signal.SIGKILL


def test_target_killed_during_findleaks(target, session):
    s = session()
    during_findleaks(s)
    target.running.proc.kill()
    assert s.finish() == (1, f"mdbpy: process {target.pid} has exited")
    assert_killed(target)


def test_target_killed_during_a_long_walk(target, session):
    s = session()
    s.send(f"{target.addr('head'):x}::walk list\n")
    for _ in range(1000):  # the walk is under way: it reads one node per element
        s.wait_for("0x")
    target.running.proc.kill()
    assert s.finish() == (1, f"mdbpy: failed to perform walk: process {target.pid} has exited")
    assert_killed(target)


# -- an internal error --------------------------------------------------------------------

def test_internal_error_after_reading(target, tmp_path):
    dmod = tmp_path / "reader_boom.py"
    dmod.write_text(
        "from mdbpy.dcmd import dcmd\n\n\n"
        "@dcmd('readboom', 'read the heap, then raise an unexpected exception')\n"
        "def readboom(inv):\n"
        "    inv.session.mem.read(inv.addr, 4096)\n"
        "    raise KeyError('surprise')\n")
    r = run_mdbpy("-S", "-p", target.pid,
                  input=f"::load {dmod}\n{target.addr('head'):x}::readboom\n")
    assert r.returncode == 1
    assert one_line_stderr(r.stderr) == "mdbpy: internal error in ::readboom: KeyError: 'surprise'"
    target.assert_intact()


# -- writes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["W", "Z", "v", "w"])
def test_no_write_without_dash_w(target, verb):
    data = target.addr("data")
    size = {"v": 1, "w": 2, "W": 4, "Z": 8}[verb]
    r = run_mdbpy("-S", "-p", target.pid, "-e", f"{data:x}/{verb} 0")
    assert r.returncode == 1
    assert one_line_stderr(r.stderr) == (f"mdbpy: failed to write {size} bytes at 0x{data:x}: "
                                         f"target is read-only (reopen with -w)")
    target.assert_intact()


def test_dash_w_writes_exactly_what_was_asked(target):
    poke = target.addr("poke")
    r = run_mdbpy("-S", "-w", "-p", target.pid, "-e", f"{poke:x}/Z 0x1122334455667788")
    assert (r.returncode, one_line_stderr(r.stderr)) == (0, "")
    assert r.stdout.split() == ["poke:", "0", "=", "0x1122334455667788"]
    target.assert_intact(poke=0x1122334455667788)
