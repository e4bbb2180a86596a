"""The command line as a user meets it: usage errors exit 2, failures exit 1 with one line on
stderr, and no input ever produces a traceback."""

from __future__ import annotations

import pytest

from support import run_mdbpy

USAGE_FIRST = "usage: mdbpy [-wS]"


@pytest.mark.parametrize("args, message", [
    ((), "mdbpy: no target: give -p PID, a core file, -- PROG, or --demo"),
    (("-p", "abc"), "mdbpy: invalid process id 'abc'"),
    (("-x",), "mdbpy: unknown option '-x'"),
    (("-p", "1", "core"), "mdbpy: -p cannot be combined with object or core file arguments"),
    (("-o", "bogus", "core"), "mdbpy: unknown option 'bogus' (known: color, demangle, ignoreeof, "
                              "json, nostop, pager, repeatlast)"),
    (("-e",), "mdbpy: option -e requires an argument"),
    (("a", "b", "c"), "mdbpy: too many arguments"),
])
def test_usage_errors_exit_2(args, message):
    r = run_mdbpy(*args)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[0] == message and lines[1].startswith(USAGE_FIRST)
    assert r.stdout == ""


def test_help_and_version():
    r = run_mdbpy("--help")
    assert r.returncode == 0 and r.stdout.startswith(USAGE_FIRST) and "-o OPT" in r.stdout
    r = run_mdbpy("--version")
    assert (r.returncode, r.stdout) == (0, "mdbpy 0.1.0\n")


def one_error(r, message: str, status: int = 1) -> None:
    assert r.returncode == status, r.stderr
    assert r.stderr.splitlines() == [message]
    assert "Traceback" not in r.stdout + r.stderr


def test_bad_targets(tmp_path, basic_gcore):
    _, core = basic_gcore
    one_error(run_mdbpy(tmp_path / "missing"),
              f"mdbpy: cannot open {tmp_path / 'missing'}: No such file or directory")
    text = tmp_path / "text"
    text.write_text("not a core\n")
    one_error(run_mdbpy(text), f"mdbpy: {text}: not an ELF file (only 11 bytes)")
    one_error(run_mdbpy("-p", "999999999", "-e", "::status"),
              "mdbpy: process 999999999 not found")
    # a core cut inside its headers is refused; one cut in its data opens with a warning
    head = tmp_path / "head.core"
    head.write_bytes(core.read_bytes()[:40])
    r = run_mdbpy(head, "-e", "::status")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"mdbpy: {head}")


def test_bad_commands_each_one_line(basic_gcore):
    _, core = basic_gcore
    one_error(run_mdbpy(core, "-e", "::nosuch"), "mdbpy: invalid command '::nosuch'")
    one_error(run_mdbpy(core, "-e", "1+"), "mdbpy: syntax error at end of command")
    one_error(run_mdbpy(core, "-e", "nosuchsym/J"),
              "mdbpy: failed to dereference symbol: unknown symbol name 'nosuchsym'")
    r = run_mdbpy(core, "-e", "0/J")
    assert r.returncode == 1
    assert r.stderr.splitlines() == ["mdbpy: failed to read 8 bytes at 0x0: no mapping"]


def test_batch_goes_on_after_errors_and_reports_the_last(basic_gcore):
    _, core = basic_gcore
    r = run_mdbpy(core, input="::nosuch\nglobal_int/D\n")
    assert r.returncode == 0
    assert r.stdout == "global_int:\nglobal_int:     4660            \n"
    assert r.stderr == "mdbpy: invalid command '::nosuch'\n"
    r = run_mdbpy(core, input="global_int/D\n1+\n")
    assert r.returncode == 1 and r.stderr == "mdbpy: syntax error at end of command\n"
