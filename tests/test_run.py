"""Programs run under mdbpy to their exit or fatal signal (`mdbpy -- PROG ARGS`, ::run): issue
24, point 1.

The fixtures (fixtures/run_*.c) print the addresses of the leaks they plant, so ::findleaks at
the stop must report exactly those; the stop must be the right moment (::status, $C, the
threads), the program's output and exit status must come through unchanged, and the program
must be gone when mdbpy is, however mdbpy ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from support import PipedSession, compile_fixture, mdbpy_cmd, one_line_stderr, run_mdbpy


@pytest.fixture(scope="module")
def exes(build_dir):
    return {name: compile_fixture(name, build_dir)
            for name in ("run_leaks", "run_crash", "run_threads", "run_fork")}


def run(*args, input: str | None = None, env=None):
    """mdbpy -S ARGS: its CompletedProcess, after checking the program it debugged is gone."""
    r = run_mdbpy("-S", *args, input=input, env=env)
    for pid in debugged_pids(r.stdout):
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} outlived mdbpy"
    return r


def debugged_pids(stdout: str) -> list[int]:
    return [int(line.split()[2]) for line in stdout.splitlines()
            if line.startswith("debugging PID ")]


def tagged(stdout: str, tag: str) -> list[int]:
    """The addresses the fixture printed on lines `TAG 0x...`, sorted."""
    return sorted(int(w[1], 16) for w in map(str.split, stdout.splitlines())
                  if len(w) == 2 and w[0] == tag)


def leaked(stdout: str) -> list[int]:
    """The BUFFER column of ::findleaks's table, sorted."""
    return sorted(int(w[2], 16) for w in map(str.split, stdout.splitlines())
                  if len(w) == 4 and w[1].isdigit() and len(w[2]) == 16)


def stack_frames(stdout: str) -> list[str]:
    """The frames $C printed (`name+0xoff(args)`), innermost first."""
    return [line.split(" ", 1)[1] for line in stdout.splitlines()
            if re.match(r"[0-9a-f]{16} \S+\(", line)]


def status_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("status: "))


# -- exit ----------------------------------------------------------------------------------

def test_leaks_at_exit_are_exact_and_status_passes_through(exes):
    r = run("-e", "::status; ::findleaks", "--", exes["run_leaks"], "3", "4", input="hello\n")
    planted = tagged(r.stdout, "LEAK")
    assert len(planted) == 4
    assert leaked(r.stdout) == planted
    assert status_line(r.stdout) == "status: process stopped at its exit (exit status 3)"
    assert r.returncode == 3
    # the program's own streams: stdin read, stdout and stderr written, in its order, first
    lines = r.stdout.splitlines()
    assert lines[4:6] == ["GOT hello", "OUT done"]
    assert [line.split()[0] for line in lines[:4]] == ["LEAK"] * 4
    assert lines[6].startswith("debugging PID ")
    assert r.stderr == "ERR done\n"


def test_exit_code_option_when_leaks_are_found(exes):
    r = run("-e", "::findleaks", "--exit-code", "42", "--", exes["run_leaks"], "0", "2")
    assert (r.returncode, len(leaked(r.stdout))) == (42, 2)
    r = run("-e", "::findleaks", "--exit-code", "42", "--", exes["run_leaks"], "6", "0")
    assert "findleaks: no memory leaks detected" in r.stdout
    assert r.returncode == 6  # no leaks: the program's status
    r = run("-e", "::status", "--exit-code", "42", "--", exes["run_leaks"], "0", "2")
    assert r.returncode == 0  # leaks not looked for: none found


def test_failed_command_with_a_successful_program(exes):
    r = run("-e", "::nosuchdcmd", "--", exes["run_leaks"], "0", "0")
    assert r.returncode == 1
    assert r.stderr == "ERR done\nmdbpy: invalid command '::nosuchdcmd'\n"


def test_threads_all_held_at_exit(exes):
    r = run("-e", "::status; ::walk thread; ::findleaks", "--", exes["run_threads"], "exit")
    assert status_line(r.stdout) == "status: process stopped at its exit (exit status 0)"
    tids = [int(line, 16) for line in r.stdout.splitlines() if line.startswith("0x")]
    assert len(tids) == 5 and tids[0] == debugged_pids(r.stdout)[0]
    # the buffers only the workers' stacks hold are not leaks: their stacks and registers are
    # all there at exit_group
    stack_bufs = [int(w[2], 16) for w in map(str.split, r.stdout.splitlines())
                  if w[:1] == ["STACK"]]
    planted = tagged(r.stdout, "LEAK")
    assert (len(stack_bufs), len(planted)) == (4, 4)
    assert leaked(r.stdout) == planted
    assert r.returncode == 0


# -- fatal signals -------------------------------------------------------------------------

@pytest.mark.parametrize("how, sig, frames", [
    ("segv", signal.SIGSEGV, ["crash_segv+0x9()", "main+"]),
    ("abrt", signal.SIGABRT, ["crash_abrt+0x9()", "main+"]),
])
def test_stop_at_fatal_signal(exes, how, sig, frames):
    r = run("-e", "::status; $C; ::findleaks", "--", exes["run_crash"], how)
    pid = debugged_pids(r.stdout)[0]
    assert status_line(r.stdout) == (f"status: process stopped by signal {sig.name} in thread "
                                     f"{pid}, before its delivery")
    stack = stack_frames(r.stdout)
    k = stack.index(frames[0])  # abort's frames in libc come first
    assert stack[k + 1].startswith(frames[1]) and (k == 0 or how == "abrt")
    assert leaked(r.stdout) == tagged(r.stdout, "LEAK") and len(leaked(r.stdout)) == 1
    assert r.stdout.splitlines()[1] == "OUT before crash"
    assert r.stderr == "ERR before crash\n"
    assert r.returncode == 128 + sig  # as a shell reports the signal


def test_sigkill_stops_at_the_exit_it_forces():
    """SIGKILL has no delivery stop, but the exit it forces still stops, memory intact; the
    shell's `kill -9 $$` is the program's own doing, and 137 its status."""
    r = run("-e", "::status", "--", "sh", "-c", "kill -9 $$")
    assert status_line(r.stdout) == "status: process stopped at its exit (killed by SIGKILL)"
    assert r.returncode == 128 + signal.SIGKILL


def test_crash_in_a_thread_stops_there(exes):
    r = run("-e", "::status; $C; ::walk thread; ::findleaks", "--", exes["run_threads"],
            "crash")
    crasher = next(int(line.split()[1]) for line in r.stdout.splitlines()
                   if line.startswith("CRASHER "))
    assert status_line(r.stdout) == (f"status: process stopped by signal SIGSEGV in thread "
                                     f"{crasher}, before its delivery")
    assert stack_frames(r.stdout)[:2] == ["crash_in_thread+0x51()", "worker+0xc5(arg=2)"]
    tids = [int(line, 16) for line in r.stdout.splitlines() if line.startswith("0x")]
    assert len(tids) == 5 and tids[0] == crasher  # every thread held, the crashing one first
    assert leaked(r.stdout) == tagged(r.stdout, "LEAK") and len(leaked(r.stdout)) == 4
    assert r.returncode == 128 + signal.SIGSEGV


# -- forks -----------------------------------------------------------------------------------

def test_fork_follows_the_parent_by_default(exes):
    r = run("-e", "::status; ::findleaks", "--", exes["run_fork"])
    assert debugged_pids(r.stdout) != [int(tagged_word(r.stdout, "CHILD"))]
    assert status_line(r.stdout) == "status: process stopped at its exit (exit status 5)"
    assert leaked(r.stdout) == tagged(r.stdout, "PARENT_LEAK")
    assert r.stdout.splitlines()[3:5] == ["CHILD STATUS 7", "SECOND STATUS 9"]
    assert r.returncode == 5


def test_fork_follows_the_child(exes):
    r = run("-o", "follow_fork_mode=child", "-e", "::status; ::findleaks", "--",
            exes["run_fork"])
    assert debugged_pids(r.stdout) == [int(tagged_word(r.stdout, "CHILD"))]
    assert status_line(r.stdout) == "status: process stopped at its exit (exit status 7)"
    # the child holds the leak its parent made before the fork, and its own
    assert leaked(r.stdout) == sorted(tagged(r.stdout, "PARENT_LEAK")
                                      + tagged(r.stdout, "CHILD_LEAK"))
    # the parent ran on afterwards, and its second child (not followed: let go) too
    assert r.stdout.splitlines()[-2:] == ["CHILD STATUS 7", "SECOND STATUS 9"]
    assert r.returncode == 5  # the status of the program mdbpy started


def tagged_word(stdout: str, tag: str) -> str:
    return next(w[1] for w in map(str.split, stdout.splitlines()) if w[:1] == [tag])


# -- ::run -----------------------------------------------------------------------------------

def test_run_dcmd_from_the_executable(exes):
    r = run(exes["run_leaks"], "-e", "::run 4 2; ::findleaks; ::status")
    pid = debugged_pids(r.stdout)[0]
    assert f"process {pid} stopped at its exit (exit status 4)" in r.stdout.splitlines()
    assert leaked(r.stdout) == tagged(r.stdout, "LEAK") and len(leaked(r.stdout)) == 2
    assert r.returncode == 4


def test_run_dcmd_follows_the_child_set_in_session(exes):
    r = run(exes["run_fork"], "-e", "::set -o follow_fork_mode=child; ::run; ::findleaks")
    child = int(tagged_word(r.stdout, "CHILD"))
    assert f"process {child} stopped at its exit (exit status 7)" in r.stdout.splitlines()
    assert len(leaked(r.stdout)) == 2
    assert r.returncode == 5


def test_run_dcmd_runs_the_opened_file_with_words_as_they_are(exes, tmp_path):
    """`mdbpy run_leaks` opened ./run_leaks: ::run runs that file, not one found in $PATH;
    words that look like options are the program's."""
    shutil.copy(exes["run_leaks"], tmp_path / "run_leaks")
    r = subprocess.run(mdbpy_cmd("-S", "run_leaks", "-e", "::run -5 1; ::status"),
                       cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert "initial argv: run_leaks -5 1" in r.stdout.splitlines()
    assert r.returncode == 256 - 5  # exit(-5)


def test_run_dcmd_on_a_file_that_cannot_run(exes, tmp_path):
    copy = tmp_path / "noexec"
    shutil.copy(exes["run_leaks"], copy)
    copy.chmod(0o644)
    r = run(copy, "-e", "::run; ::status")
    assert r.stderr == (f"mdbpy: {copy}: not executable (chmod +x, or check the mount's "
                        f"noexec)\n")
    assert r.stdout.splitlines()[1] == f"executable file: {copy}"  # still the file
    assert r.returncode == 0


def test_run_twice_says_what_to_do(exes):
    r = run(exes["run_leaks"], "-e", "::run 0 0; ::run; ::status")
    pid = debugged_pids(r.stdout)[0]
    assert r.stderr.splitlines()[-1] == (
        f"mdbpy: process {pid} is stopped at its end; ::kill it first to start the program "
        f"again")
    assert r.returncode == 0


def test_run_again_after_kill(exes):
    r = run(exes["run_leaks"], "-e", "::run 0 1; ::kill; ::run 4 2; ::findleaks; ::status")
    first, second = (int(line.split()[1]) for line in r.stdout.splitlines()
                     if line.startswith("process ") and "stopped" in line)
    assert f"process {first} killed" in r.stdout.splitlines()
    assert debugged_pids(r.stdout) == [second]
    assert not os.path.exists(f"/proc/{first}")
    planted = [int(w[1], 16) for w in map(str.split, r.stdout.splitlines()) if w[:1] == ["LEAK"]]
    assert len(planted) == 3 and leaked(r.stdout) == sorted(planted[1:])  # the second run's
    assert r.returncode == 4  # the status of the program running when the session ended


def test_run_on_a_core(basic_gcore):
    _, core = basic_gcore
    r = run_mdbpy("-S", core, "-e", "::run")
    assert one_line_stderr(r.stderr) == (f"mdbpy: ::run needs an executable, and the target is "
                                         f"core file {core}: start mdbpy PROG, then ::run ARGS")
    assert r.returncode == 1


def test_release_is_refused(exes):
    r = run("-e", "::release; ::status", "--", exes["run_leaks"], "0", "0")
    pid = debugged_pids(r.stdout)[0]
    assert r.stderr.splitlines()[-1] == (
        f"mdbpy: process {pid} was started by mdbpy, which lets it complete when the session "
        f"ends; quit ($q) for that, or ::kill it")
    assert status_line(r.stdout) == "status: process stopped at its exit (exit status 0)"
    assert r.returncode == 0


def test_run_on_an_attached_process(basic_proc):
    r = run_mdbpy("-S", "-p", basic_proc.pid, "-e", "::run")
    assert one_line_stderr(r.stderr) == (
        f"mdbpy: a process is already attached (PID {basic_proc.pid}); ::run starts a new "
        f"one: quit, then mdbpy PROG and ::run ARGS, or mdbpy -e CMDS -- PROG ARGS")
    assert r.returncode == 1
    basic_proc.assert_untouched()


# -- bad input -------------------------------------------------------------------------------

def test_bad_programs(exes, tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x01\x02garbage")
    garbage.chmod(0o755)
    shutil.copy(exes["run_leaks"], tmp_path / "run_leaks")
    env = {"PATH": f".::{os.path.dirname(shutil.which('true'))}"}
    cases = [
        ([str(tmp_path / "nope")], f"mdbpy: {tmp_path}/nope: no such file"),
        ([str(plain)], f"mdbpy: {plain}: not executable (chmod +x, or check the mount's "
                       f"noexec)"),
        ([str(tmp_path)], f"mdbpy: {tmp_path}: is a directory"),
        ([str(garbage)], f"mdbpy: cannot execute {garbage}: Exec format error"),
    ]
    for argv, message in cases:
        r = run_mdbpy("-S", "-e", "::status", "--", *argv, env=env)
        assert (r.returncode, one_line_stderr(r.stderr), r.stdout) == (1, message, "")
    # a bare name is looked up in $PATH only, never in the current directory ('.' or '')
    r = subprocess.run(mdbpy_cmd("-S", "-e", "::status", "--", "run_leaks"), cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, **env))
    assert (r.returncode, one_line_stderr(r.stderr)) == (
        1, "mdbpy: run_leaks: command not found in $PATH (to run a file in the current "
           "directory, give its path: ./run_leaks)")
    # a bare name found in $PATH runs
    r = run_mdbpy("-S", "-e", "::status", "--", "true", env=env)
    assert (r.returncode, r.stderr) == (0, "")
    assert status_line(r.stdout) == "status: process stopped at its exit (exit status 0)"


@pytest.mark.parametrize("argv, message", [
    (["--"], "mdbpy: -- must be followed by the program to run"),
    (["-p", "1", "--", "true"], "mdbpy: a program to run (-- PROG) takes no other target: "
                                "drop -p, --demo or the object and core files"),
    (["--exit-code", "3", "core"], "mdbpy: --exit-code goes with a program to run (-- PROG)"),
    (["--exit-code", "256", "--", "true"], "mdbpy: --exit-code 256: an exit status is 0 to 255"),
    (["-o", "follow_fork_mode=both", "--", "true"],
     "mdbpy: follow_fork_mode= is parent or child, not 'both'"),
])
def test_usage_errors(argv, message):
    r = run_mdbpy("-S", *argv)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == message
    assert "Traceback" not in r.stderr


# -- mdbpy ends while the program runs ---------------------------------------------------------

def start_sleeping(**popen):
    """mdbpy running `sleep 600` under it: (mdbpy's Popen, sleep's pid), once sleep runs."""
    p = subprocess.Popen(mdbpy_cmd("-S", "-e", "::status", "--", "sleep", "600"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in _children(p.pid):
            if _comm(child) == "sleep":
                return p, child
        time.sleep(0.02)
    p.kill()
    raise AssertionError("sleep did not start under mdbpy")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(w) for w in f.read().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """The process no longer exists (reaped, by mdbpy or by init)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_mdbpy_kills_the_program(sig):
    p, pid = start_sleeping()
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (128 + sig, "")
    assert one_line_stderr(err) == f"mdbpy: terminated by {sig.name}"
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped before mdbpy exited


def test_sigkill_of_mdbpy_kills_the_program():
    p, pid = start_sleeping()
    p.kill()
    p.communicate(timeout=30)
    assert wait_gone(pid)  # PTRACE_O_EXITKILL


def test_sigkill_of_mdbpy_while_it_takes_hold_kills_the_program():
    """mdbpy killed the moment its program exists, before it is seized (the program traced
    by TRACEME, or stopped between the tracers): the parent-death signal ends it, so it
    neither runs on nor stays stopped holding mdbpy's pipes."""
    for _ in range(5):
        p = subprocess.Popen(mdbpy_cmd("-S", "-e", "::status", "--", "sleep", "600"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not (kids := _children(p.pid)):
            assert time.monotonic() < deadline, "mdbpy started no program"
        p.kill()
        p.communicate(timeout=30)  # the pipes close: nothing of mdbpy's holds them
        assert all(wait_gone(k) for k in kids)


def test_ctrl_c_is_the_programs():
    """The terminal sends SIGINT to the whole foreground group: mdbpy lets the program have it
    and stops the program there, since it is fatal to sleep."""
    p, pid = start_sleeping(start_new_session=True)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert status_line(out) == (f"status: process stopped by signal SIGINT in thread {pid}, "
                                f"before its delivery")
    assert (p.returncode, err) == (128 + signal.SIGINT, "")
    assert not os.path.exists(f"/proc/{pid}")


def test_sigterm_while_stopped_kills_the_program(exes):
    """mdbpy ended while the session looks at the crash: the program is killed, not left
    stopped or let loose."""
    s = PipedSession("--", exes["run_crash"], "segv")
    try:
        s.send("::status\n")
        pid = int(s.wait_for("debugging PID ").split()[2])
        assert s.wait_for("status:").startswith("status: process stopped by signal SIGSEGV")
        s.wait_reading_stdin()
        s.proc.send_signal(signal.SIGTERM)
        _, err = s.proc.communicate(timeout=60)
        assert (s.proc.returncode, err.decode()) == (
            128 + signal.SIGTERM, "ERR before crash\nmdbpy: terminated by SIGTERM\n")
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        s.kill()


@pytest.mark.parametrize("argv, status", [
    (["run_leaks", "3", "0"], 3),  # in exit_group already: the exit completes, as it was
    (["run_crash", "segv"], 128 + signal.SIGKILL),  # killed instead of the SIGSEGV
])
def test_kill_dcmd_ends_the_program(exes, argv, status):
    r = run("-e", "::status; ::kill; ::status", "--", exes[argv[0]], *argv[1:])
    pid = debugged_pids(r.stdout)[0]
    assert f"process {pid} killed" in r.stdout.splitlines()
    assert r.stdout.splitlines()[-1] == f"status: no process active: process {pid} was killed"
    assert r.returncode == status
