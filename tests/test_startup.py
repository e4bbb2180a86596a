"""Start-up and settings: ~/.mdbpyrc (read from the user's own home only, skipped with -S, an
error in it one line naming the file and line), colour only on a terminal without NO_COLOR,
--version, a --help made from the parser's own option table, `python -m mdbpy`."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from mdbpy import cli
from mdbpy.errors import UsageError
from support import mdbpy_cmd, run_mdbpy


@pytest.fixture(scope="module")
def demo_core(tmp_path_factory) -> tuple[str, str]:
    """(PROG, CORE) of the simulator's demo, written once: opening it is fast."""
    from mdbpy.sim.build import build, write
    from mdbpy.sim.demo import SCENARIO

    prog, core, _truth = write(build(SCENARIO.read_text()), str(tmp_path_factory.mktemp("demo")))
    return prog, core


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def run_home(home: Path, *args, cwd=None):
    env = {"HOME": str(home)}
    e = dict(os.environ, **env)
    e.pop("NO_COLOR", None)
    return subprocess.run(mdbpy_cmd(*args), capture_output=True, text=True, env=e, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=120)


RC = "0t42>answer\n::bogus\n::set -o repeatlast\n"


def test_rc_runs_before_the_commands_and_an_error_names_its_line(home, demo_core):
    rc = home / ".mdbpyrc"
    rc.write_text(RC)
    r = run_home(home, *demo_core, "-e", "<answer=D; ::set")
    assert r.stderr.splitlines() == [f"mdbpy: {rc}:2: invalid command '::bogus'"]
    assert r.returncode == 0
    out = r.stdout.splitlines()
    assert out[0].strip() == "42"
    assert " debugger options: color, pager, repeatlast" in out  # ::set persists


def test_dash_S_skips_the_rc(home, demo_core):
    (home / ".mdbpyrc").write_text(RC)
    r = run_home(home, "-S", *demo_core, "-e", "<answer=D")
    assert r.stderr.splitlines() == ["mdbpy: variable 'answer' is not defined"]
    assert (r.returncode, r.stdout) == (1, "")


@pytest.mark.parametrize("setup, why", [
    (lambda rc: rc.chmod(0o666), "writable by everyone (chmod o-w to use it)"),
    (lambda rc: os.chown(rc, 65534, -1), f"owned by uid 65534, not by you (uid {os.getuid()})"),
])
def test_unsafe_rc_is_refused_with_one_line(home, demo_core, setup, why):
    if os.getuid() != 0 and "uid" in why:
        pytest.skip("chown to another user needs root")
    rc = home / ".mdbpyrc"
    rc.write_text(RC)
    setup(rc)
    r = run_home(home, *demo_core, "-e", "<answer=D")
    assert r.stderr.splitlines() == [f"mdbpy: ignoring {rc}: {why}",
                                     "mdbpy: variable 'answer' is not defined"]


def test_a_fifo_rc_is_refused_without_waiting(home, demo_core):
    rc = home / ".mdbpyrc"
    os.mkfifo(rc)
    r = run_home(home, *demo_core, "-e", "0t7=D")
    assert r.stderr.splitlines() == [f"mdbpy: ignoring {rc}: not a regular file"]
    assert r.stdout.split() == ["7"]


def test_rc_in_the_current_directory_is_not_read(home, demo_core, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / ".mdbpyrc").write_text(RC)
    shutil.copy(demo_core[1], cwd / "confsrv.core")
    r = run_home(home, demo_core[0], "confsrv.core", "-e", "<answer=D", cwd=cwd)
    assert r.stderr.splitlines() == ["mdbpy: variable 'answer' is not defined"]


def test_rc_path_is_home_or_the_passwd_entry(monkeypatch):
    import pwd

    monkeypatch.setenv("HOME", "/somewhere")
    assert cli.rc_path() == "/somewhere/.mdbpyrc"
    monkeypatch.setenv("HOME", "relative/dir")  # not a home: take the passwd entry's
    assert cli.rc_path() == os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".mdbpyrc")


def tty_run(args, env_extra: dict) -> str:
    """mdbpy's stdout on a pseudo-terminal (what a user sees in a terminal)."""
    master, slave = pty.openpty()
    env = dict(os.environ, **env_extra)
    if "NO_COLOR" not in env_extra:
        env.pop("NO_COLOR", None)
    p = subprocess.Popen(mdbpy_cmd(*args), stdout=slave, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait(timeout=120) == 0
    return b"".join(chunks).decode()


@pytest.mark.parametrize("env, args, coloured", [
    ({}, (), True),
    ({"NO_COLOR": ""}, (), True),  # no-color.org: only a non-empty value counts
    ({"NO_COLOR": "1"}, (), False),
    ({}, ("+o", "color"), False),
])
def test_colour_on_a_terminal_unless_no_color(basic_gcore, env, args, coloured):
    _, core = basic_gcore
    out = tty_run(("-S", *args, core, "-e", "main::dis -n 2"), env)
    assert "main" in out and ("\x1b[" in out) is coloured


def test_no_colour_when_not_a_terminal(basic_gcore):
    r = run_mdbpy("-S", basic_gcore[1], "-e", "main::dis -n 2")
    assert r.returncode == 0 and "main" in r.stdout and "\x1b" not in r.stdout


def test_version_is_the_package_metadata():
    r = run_mdbpy("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"mdbpy {version('mdbpy')}\n", "")
    assert run_mdbpy("-V").stdout == r.stdout


def test_help_lists_every_option_the_parser_knows():
    r = run_mdbpy("--help")
    assert r.returncode == 0 and r.stderr == ""
    text = r.stdout
    flags = {f for o in cli.OPTIONS for f in o.flags}
    assert flags >= {"-p", "--demo", "-e", "-f", "-w", "-o", "+o", "-R", "--sysroot", "-S",
                     "--json", "-I", "-P", "-V", "--version", "-h", "--help"}
    option_lines = [line for line in text.splitlines() if re.match(r"  [-+]", line)]
    listed = {f for line in option_lines for f in re.findall(r"(?<![\w-])(--?[\w-]+|\+o)",
                                                             line.split("  ")[1])}
    assert listed == flags
    for o in cli.OPTIONS:  # each with its value's name, under a group heading
        spelled = ", ".join(o.flags) + (f" {o.metavar}" if o.metavar else "")
        assert f"  {spelled} " in text
    for heading in ("targets:", "commands:", "target access:", "session:", "information:",
                    "examples:"):
        assert heading in text.splitlines()
    assert "mdbpy [options] -p PID" in text and "mdbpy [options] [object] core" in text


@pytest.mark.parametrize("argv, want", [
    (["-wS", "core"], dict(writable=True, no_rc=True, positional=["core"])),
    (["-p1234"], dict(pid=1234)),
    (["-p", "1234", "-o", "nostop,pager", "+o", "pager"],
     dict(pid=1234, options={"nostop": True, "pager": False})),
    (["--sysroot=/r", "-we", "::status", "c"],
     dict(sysroot="/r", writable=True, commands="::status", positional=["c"])),
    (["-R", "/r", "./-core"], dict(sysroot="/r", positional=["./-core"])),
    (["-e", "::findleaks", "--exit-code", "9", "--", "./prog", "-v", "--", "x"],
     dict(commands="::findleaks", leak_status=9, positional=[],
          program=["./prog", "-v", "--", "x"])),
    (["-I", "a:b", "-P", "$ ", "--demo"], dict(macro_path=["a", "b"], prompt="$ ", demo=True)),
    (["-o", "walklimit=010,nostop", "c"],
     dict(settings={"walklimit": "10"}, options={"nostop": True})),
])
def test_parser(argv, want):
    a = cli.parse_args(argv)
    for k, v in want.items():
        assert getattr(a, k) == v, k


@pytest.mark.parametrize("argv, message", [
    (["-wx", "core"], "unknown option '-x'"),
    (["--demo=1"], "option --demo takes no argument"),
    (["--sysroot"], "option --sysroot requires an argument"),
    (["+o"], "option +o requires an argument"),
    (["--demo", "-e", "1", "-f", "x"], "-e and -f cannot be combined"),
    (["-o", "walklimit=x"], "walklimit= needs a decimal count, not 'x'"),
    (["+o", "walklimit=3"], "walklimit= takes a value: use -o walklimit=0 for no limit"),
    (["-o", "depth=3"], "unknown option 'depth=' (valued options: walklimit=N, "
                        "follow_fork_mode=parent|child)"),
])
def test_parser_errors(argv, message):
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        cli.parse_args(argv)


def test_walklimit_from_the_command_line(demo_core):
    """-o walklimit=N on the command line caps walks as ::set -o walklimit=N does."""
    walk = "*config_list::walk list"
    full = run_mdbpy("-S", *demo_core, "-e", walk)
    cut = run_mdbpy("-S", "-o", "walklimit=2", *demo_core, "-e", walk + "; ::set")
    assert full.returncode == cut.returncode == 0
    items = full.stdout.split()
    assert len(items) == 3 and cut.stdout.split()[:3] == items[:2] + ["macro"]
    assert "walk limit: 2\n" in cut.stdout
    assert cut.stderr == ("mdbpy: walk stopped after 2 elements (walklimit; ::set -o "
                          "walklimit=0 lifts it)\n")


def test_python_dash_m_is_the_mdbpy_script(demo_core):
    script = shutil.which("mdbpy", path=os.path.dirname(sys.executable))
    args = ("-S", *demo_core, "-e", "::status; 0t6*7=D")
    via_m = subprocess.run([sys.executable, "-m", "mdbpy", *args], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
    via_script = subprocess.run([script, *args], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
    assert via_m.returncode == via_script.returncode == 0
    assert via_m.stdout == via_script.stdout and via_m.stdout.split()[-1] == "42"
    bad = subprocess.run([sys.executable, "-m", "mdbpy"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("mdbpy: no target")
