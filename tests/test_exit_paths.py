"""Every way out of a live session, through the real CLI: the target must be left running,
untraced and unchanged, mdbpy must exit with the status cli.py specifies, and stderr must hold at
most one line and never a traceback.

Sessions that are signalled are synchronised on mdbpy's output (the `status:` line of ::status
proves it has attached and is back reading stdin), never on sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from support import STOPPED, PipedSession, one_line_stderr, run_mdbpy


def piped(pid: int, *args) -> PipedSession:
    """mdbpy -p PID (and args) reading commands from a pipe."""
    return PipedSession("-p", pid, *args)


@pytest.fixture
def session_for(basic_proc):
    started = []

    def start(*args) -> PipedSession:
        s = piped(basic_proc.pid, *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def test_quit_with_dollar_q(basic_proc):
    r = run_mdbpy("-S", "-p", basic_proc.pid, input="::status\n$q\n::status\n")
    assert r.returncode == 0
    assert one_line_stderr(r.stderr) == ""
    assert r.stdout.count(STOPPED) == 1  # nothing after $q ran
    basic_proc.assert_untouched()


def test_end_of_input(basic_proc):
    r = run_mdbpy("-S", "-p", basic_proc.pid, input="::status\n")
    assert (r.returncode, one_line_stderr(r.stderr)) == (0, "")
    assert r.stdout.splitlines()[0] == f"debugging PID {basic_proc.pid} (64-bit)"
    basic_proc.assert_untouched()


def test_dash_e(basic_proc):
    r = run_mdbpy("-S", "-p", basic_proc.pid, "-e", "::status")
    assert (r.returncode, one_line_stderr(r.stderr)) == (0, "")
    assert r.stdout.splitlines()[-1] == STOPPED
    basic_proc.assert_untouched()


def test_nostop_option(basic_proc):
    r = run_mdbpy("-S", "-o", "nostop", "-p", basic_proc.pid, "-e", "::status")
    assert (r.returncode, one_line_stderr(r.stderr)) == (0, "")
    assert r.stdout.splitlines()[-1] == "status: process is running (-o nostop)"
    basic_proc.assert_untouched()


@pytest.mark.parametrize("sig, status, message", [
    (signal.SIGINT, 130, "mdbpy: interrupted"),
    (signal.SIGTERM, 128 + signal.SIGTERM, "mdbpy: terminated by SIGTERM"),
    (signal.SIGHUP, 128 + signal.SIGHUP, "mdbpy: terminated by SIGHUP"),
])
def test_signal_while_waiting_on_stdin(basic_proc, session_for, sig, status, message):
    s = session_for()
    s.attached()
    s.wait_reading_stdin()
    s.proc.send_signal(sig)
    assert s.finish() == (status, message)
    basic_proc.assert_untouched()


def test_sigkill_of_mdbpy_leaves_the_target_running(basic_proc, session_for):
    """A seized process is resumed by the kernel when its tracer dies, whatever killed it."""
    s = session_for()
    s.attached()
    s.proc.kill()
    assert s.finish() == (-signal.SIGKILL, "")
    basic_proc.assert_untouched()


def test_internal_error_in_a_dcmd(basic_proc, tmp_path):
    dmod = tmp_path / "boomer.py"
    dmod.write_text(
        "from mdbpy.dcmd import dcmd\n\n\n"
        "@dcmd('boom', 'raise an unexpected exception')\n"
        "def boom(inv):\n"
        "    raise RuntimeError('kaboom')\n")
    r = run_mdbpy("-S", "-p", basic_proc.pid, input=f"::load {dmod}\n::boom\n")
    assert r.returncode == 1
    assert one_line_stderr(r.stderr) == "mdbpy: internal error in ::boom: RuntimeError: kaboom"
    basic_proc.assert_untouched()


def test_target_exiting_mid_session(basic_proc, session_for):
    s = session_for()
    s.attached()
    basic_proc.proc.kill()
    for _ in range(100000):  # until the kernel has made it a zombie
        with open(f"/proc/{basic_proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                break
        os.sched_yield()
    s.send(f"{basic_proc.addr('list_head'):x}/J\n")
    assert s.finish() == (1, f"mdbpy: process {basic_proc.pid} has exited")
    assert basic_proc.proc.wait(timeout=60) == -signal.SIGKILL


def test_release_then_reads_fail(basic_proc):
    head = basic_proc.addr("list_head")
    r = run_mdbpy("-S", "-p", basic_proc.pid, input=f"::release\n{head:x}/J\n")
    assert r.returncode == 1
    assert r.stdout == f"process {basic_proc.pid} released\n"
    assert one_line_stderr(r.stderr) == (f"mdbpy: no process active: process {basic_proc.pid} "
                                         f"was released; attach again with mdbpy -p "
                                         f"{basic_proc.pid}")
    basic_proc.assert_untouched()


def test_kill_then_reads_fail(basic_proc):
    r = run_mdbpy("-S", "-p", basic_proc.pid, "-e", "::kill; ::mappings")
    assert r.returncode == 1
    assert r.stdout == f"process {basic_proc.pid} killed\n"
    assert one_line_stderr(r.stderr) == f"mdbpy: no process active: process {basic_proc.pid} " \
                                        f"was killed"
    assert basic_proc.proc.wait(timeout=60) == -signal.SIGKILL


def test_release_on_a_core_is_not_supported(basic_gcore):
    _, core = basic_gcore
    r = run_mdbpy("-S", core, "-e", "::release")
    assert r.returncode == 1
    assert one_line_stderr(r.stderr) == "mdbpy: command is not supported by current target"


def test_attach_errors_exit_1_with_one_line(basic_proc):
    p = subprocess.Popen(["true"])
    p.wait()
    r = run_mdbpy("-S", "-p", p.pid, "-e", "::status")
    assert (r.returncode, one_line_stderr(r.stderr)) == (1, f"mdbpy: process {p.pid} not found")
    assert r.stdout == ""
    # a second debugger while one holds the process: refused, naming the holder
    s = piped(basic_proc.pid)
    try:
        s.attached()
        r = run_mdbpy("-S", "-p", basic_proc.pid, "-e", "::status")
        assert r.returncode == 1
        assert one_line_stderr(r.stderr).startswith(
            f"mdbpy: process {basic_proc.pid} is already traced by process {s.proc.pid} (")
        assert s.finish() == (0, "")
    finally:
        s.kill()
    basic_proc.assert_untouched()

