"""Everyday and hostile input (issue 19): no code from the current directory, no internal
errors, no hangs. Each case asserts the exact message and exit status, within a time limit.

- A current directory holding `core`, `sim`, `umem/`, `ptmalloc/`, `numpy.py`, `mdbpy/` and
  `mdbpy_commands/` that leave a marker when run: mdbpy -p PID, mdbpy on a core and
  `python -m mdbpy` run none of them; `::load` takes a path only when one is written.
- Core headers: a p_memsz with its top bit flipped, a segment grown over its neighbour, one at
  an address no process can map: each one warning, and ::findleaks ends quickly.
- EPIPE ends mdbpy quietly with status 0, after resuming a live target; a standard stream the
  shell closed reads as empty or writes nowhere; batch input is decoded
  by one rule on every path; argument errors come before any attach; every ::load failure is
  one line; a ~/.mdbpyrc that is a directory is one warning.
- `$<` nesting is limited as `$<<` is; ::heapmap refuses a picture too big before it runs
  ::findleaks or verify; ::help knows every bundled dcmd and wraps to the terminal.
"""

from __future__ import annotations

import io
import os
import pty
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fuzz_support import watchdog
from support import ROOT, bundled_modules, mdbpy_cmd

from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.target import elfcore as ec
from mdbpy.target.synthetic import SyntheticTarget

SECONDS = 60  # per case: each takes about a second alone; the machine may be shared

HOSTILE_FILES = {
    "core": "open('PWNED-core', 'w')\n",  # the kernel's default core name
    "sim": "open('PWNED-sim', 'w')\n",
    "umem/__init__.py": "open('PWNED-umem', 'w')\n",
    "ptmalloc/__init__.py": "open('PWNED-ptmalloc', 'w')\n",
    "numpy.py": "open('PWNED-numpy', 'w')\n",
    "mdbpy_commands/__init__.py": "open('PWNED-mdbpy_commands', 'w')\n",
    "mdbpy/__init__.py": "open('PWNED-mdbpy', 'w')\n",
}


def run(args, cwd=None, env=None, input: bytes | None = None, stdout=subprocess.PIPE):
    """A CompletedProcess (bytes) of `args`, within SECONDS."""
    e = dict(os.environ, **(env or {}))
    e.pop("NO_COLOR", None)
    return subprocess.run(args, cwd=cwd, env=e, input=input, stdout=stdout,
                          stderr=subprocess.PIPE, timeout=SECONDS,
                          stdin=None if input is not None else subprocess.DEVNULL)


def lines(b: bytes) -> list[str]:
    return b.decode().splitlines()


# -- the current directory --------------------------------------------------------------------

@pytest.fixture
def hostile(tmp_path) -> Path:
    """A directory holding every module name mdbpy might be tricked into running."""
    for name, text in HOSTILE_FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def console_script(tmp_path: Path) -> list[str]:
    """The `mdbpy` command as pip writes it from pyproject.toml's entry point (in a directory
    of its own, as a venv's bin/), independent of how this checkout was installed."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["mdbpy"]
    module, func = entry.split(":")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mdbpy").write_text(f"import sys\nfrom {module} import {func}\n"
                                   f"if __name__ == '__main__':\n    sys.exit({func}())\n")
    return [sys.executable, str(bin_dir / "mdbpy")]


def assert_nothing_ran(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir() if p.name.startswith("PWNED")) == []


def test_console_script_runs_nothing_from_the_cwd(hostile, tmp_path_factory, basic_proc,
                                                   basic_gcore):
    mdbpy = console_script(tmp_path_factory.mktemp("script"))
    live = run([*mdbpy, "-S", "-p", str(basic_proc.pid), "-e", "::findleaks"], cwd=hostile)
    assert (live.returncode, lines(live.stderr)) == (0, [])
    assert lines(live.stdout)[-1] == "findleaks: no memory leaks detected"
    basic_proc.assert_untouched()
    dead = run([*mdbpy, "-S", str(basic_gcore[1]), "-e", "::findleaks"], cwd=hostile)
    assert (dead.returncode, lines(dead.stderr)) == (0, [])
    assert lines(dead.stdout)[-1] == "findleaks: no memory leaks detected"
    assert_nothing_ran(hostile)


def test_console_script_drops_the_cwd_from_pythonpath(hostile, tmp_path_factory, basic_gcore):
    """An empty PYTHONPATH entry (`PYTHONPATH=$PYTHONPATH:/x` with it unset) names the current
    directory; it is dropped before anything but mdbpy itself is imported."""
    (hostile / "mdbpy" / "__init__.py").unlink()
    (hostile / "mdbpy").rmdir()  # found before mdbpy runs: Python's rule (docs/safety.md)
    mdbpy = console_script(tmp_path_factory.mktemp("script"))
    r = run([*mdbpy, "-S", str(basic_gcore[1]), "-e", "::findleaks"], cwd=hostile,
            env={"PYTHONPATH": ":"})
    assert (r.returncode, lines(r.stderr)) == (0, [])
    assert_nothing_ran(hostile)


def test_python_dash_m_runs_nothing_from_the_cwd(hostile, basic_gcore):
    """`python -m` puts the current directory first on sys.path: a `mdbpy/` there is what
    Python runs (docs/safety.md), but from mdbpy's own __main__ on nothing else comes from
    there; `python -P -m mdbpy` (3.11) is safe from the `mdbpy/` too."""
    if sys.version_info >= (3, 11):
        r = run([sys.executable, "-P", "-m", "mdbpy", "-S", str(basic_gcore[1]), "-e",
                 "::findleaks"], cwd=hostile)
        assert (r.returncode, lines(r.stderr)) == (0, [])
    (hostile / "mdbpy" / "__init__.py").unlink()
    (hostile / "mdbpy").rmdir()
    r = run([*mdbpy_cmd("-S", basic_gcore[1], "-e", "::findleaks")], cwd=hostile)
    assert (r.returncode, lines(r.stderr)) == (0, [])
    assert lines(r.stdout)[-1] == "findleaks: no memory leaks detected"
    assert_nothing_ran(hostile)


def test_load_takes_a_path_only_when_one_is_written(hostile, monkeypatch):
    (hostile / "mine.py").write_text("from mdbpy.dcmd import dcmd\n\n\n"
                                     "@dcmd('mine', 'say mine')\ndef mine(inv):\n"
                                     "    inv.print('mine')\n")
    monkeypatch.chdir(hostile)
    h = Harness()
    for spec in ("umem", "ptmalloc", "sim"):  # the bundled ones, whatever the cwd holds
        h(f"::load {spec}")
        assert "failed to load" not in h.errors() and f"{spec}\n" in h("::dmods")
    assert h("::load mine") == ""
    assert h.errors() == ("mdbpy: failed to load module 'mine': no such module (installed: "
                          f"{', '.join(bundled_modules())}; a file is loaded by its path, "
                          "e.g. ./mine.py)\n")
    assert h("::load ./mine.py; ::mine") == "mine\n"
    assert_nothing_ran(hostile)


# -- in-process sessions --------------------------------------------------------------------

class Harness:
    """A session over a page of synthetic memory; calling it runs a command line and returns
    its output (errors in errors())."""

    def __init__(self, target=None):
        self.session = Session(target or SyntheticTarget([(0x1000, bytes(4096))]),
                               out=io.StringIO(), err=io.StringIO())
        self.engine = Engine(self.session)
        self.status = 0

    def __call__(self, text: str) -> str:
        for f in (self.session.out, self.session.err):
            f.seek(0)
            f.truncate()
        with watchdog(SECONDS):
            self.status = self.engine.run_string(text)
        return self.session.out.getvalue()

    def errors(self) -> str:
        return self.session.err.getvalue()


def test_every_load_failure_is_one_line_naming_the_file(tmp_path):
    files = {
        "syntax.py": "x = 1\n\ndef (\n",
        "imports.py": "import no_such_module_anywhere\n",
        "exits.py": "import sys\nsys.exit(3)\n",
        "raises.py": "raise RuntimeError('first line\\nsecond line')\n",
        "noalloc.py": "class A:\n    pass\n\nALLOCATOR = A\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pkg").mkdir()
    os.mkfifo(tmp_path / "fifo.py")
    elf = os.path.realpath(sys.executable)
    expect = {
        "/etc/passwd": "not Python: invalid syntax at line 1",
        elf: "an ELF file, not a Python module",
        str(tmp_path / "syntax.py"): "not Python: invalid syntax at line 3",
        str(tmp_path / "imports.py"):
            "ModuleNotFoundError: No module named 'no_such_module_anywhere'",
        str(tmp_path / "exits.py"): "SystemExit: 3",
        str(tmp_path / "raises.py"): "RuntimeError: first line",
        str(tmp_path / "noalloc.py"): "its ALLOCATOR does not define detect(), buffers()",
        str(tmp_path / "pkg"): "a directory without __init__.py",
        str(tmp_path / "fifo.py"): "not a regular file",
        str(tmp_path / "absent.py"): "No such file or directory",
    }
    h = Harness()
    for spec, why in expect.items():
        assert h(f"::load {spec}") == ""
        assert (h.status, h.errors()) == (1, f"mdbpy: failed to load module '{spec}': {why}\n")
    assert h("::dmods") == "mdb\n"  # nothing half-loaded
    assert not list(tmp_path.glob("**/__pycache__"))


def test_macro_that_includes_itself_stops_as_deep_as_dollar_lt_lt(tmp_path):
    (tmp_path / "replace").write_text("::echo r\n$< replace\n")
    (tmp_path / "source").write_text("::echo s\n$<< source\n")
    h = Harness()
    h.session.macro_path = [str(tmp_path)]
    for name, word in (("replace", "r"), ("source", "s")):
        out = h(f"$< {name}")
        assert out == f"{word} \n" * 31
        assert (h.status, h.errors()) == (
            1, "mdbpy: input nested too deeply (more than 32 levels)\n")


def test_help_knows_every_bundled_dcmd_before_its_module_loads():
    h = Harness()
    assert "umem" not in h("::dmods")
    out = h("::help umem_cache")
    assert out.startswith("\nNAME\n  umem_cache - print a umem cache\n")
    assert "  Module: umem (not loaded in this session: ::load umem)\n" in out
    assert "  Module: ptmalloc (not loaded in this session: ::load ptmalloc)\n" in h(
        "::help tcachebins")
    assert h.errors() == ""
    from mdbpy.dcmd import declared_registry

    for name in declared_registry().dcmds:
        assert h(f"::help '{name}'").startswith("\nNAME\n") and h.errors() == "", name


def test_help_is_wrapped_once_to_the_terminal_width():
    import fcntl
    import termios

    from mdbpy_commands.core.lang import help_width, wrapped

    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
        with open(slave, "w", closefd=False) as tty:
            assert help_width(tty) == 40
    finally:
        os.close(master)
        os.close(slave)
    assert help_width(io.StringIO()) == 80
    text = ("A paragraph written with line breaks\nat the source's width, not the reader's.\n\n"
            "  -o file   an option whose text goes on\n"
            "            under it\n"
            "  #  a table row\n")
    assert wrapped(text, 40) == (
        "  A paragraph written with line breaks\n"
        "  at the source's width, not the\n"
        "  reader's.\n"
        "\n"
        "    -o file   an option whose text goes\n"
        "              on under it\n"
        "    #  a table row\n")
    h = Harness()
    out = h("::help heapmap")
    assert max(map(len, out.splitlines())) <= 80
    assert "  Draw each allocator's heap as a map of cells, in address order: one cell per\n" \
        "  buffer (chunk, slab object)" in out


def test_heapmap_refuses_before_findleaks_and_verify(monkeypatch):
    from mdbpy.heap import picture as P
    from mdbpy.sim.demo import open_demo_target
    from mdbpy_commands.core.heap import LEAKS_KEY
    from mdbpy_commands.core.picture import VERIFY_KEY

    monkeypatch.setattr(P, "MAX_CELLS", 100)
    h = Harness(open_demo_target())
    try:
        assert h("::heapmap -lv") == ""
        assert (h.status, h.errors()) == (1, "mdbpy: heapmap: 126 buffers is too many cells (at "
                                             "most 100); use -b 0x400 (80 cells), or -c for "
                                             "one cache\n")
        assert LEAKS_KEY not in h.session.cache and VERIFY_KEY not in h.session.cache
        assert h("::heapmap -lv -b 400").splitlines()[-1] == (
            "# allocated 2  . free 58  L leaked 1  X corrupt 3  m metadata 0  - other 16")
    finally:
        h.session.close()


# -- core headers ---------------------------------------------------------------------------

def _phdr_field(raw: bytes, vaddr: int, field: int) -> int:
    """The file offset of a field of the PT_LOAD at vaddr."""
    eh = ec.parse_ehdr(raw)
    for i, ph in enumerate(ec.parse_phdrs(raw[eh.phoff:], eh.phnum)):
        if ph.type == ec.PT_LOAD and ph.vaddr == vaddr:
            return eh.phoff + i * ec.PHDR.size + field
    raise AssertionError(f"no PT_LOAD at {vaddr:#x}")


def damaged(basic_gcore, tmp_path, edit) -> tuple[Path, list]:
    """A copy of gdb's core of `basic` changed by edit(raw, loads); (path, loads)."""
    raw = bytearray(basic_gcore[1].read_bytes())
    eh = ec.parse_ehdr(raw)
    loads = [ph for ph in ec.parse_phdrs(raw[eh.phoff:], eh.phnum) if ph.type == ec.PT_LOAD]
    edit(raw, loads)
    path = tmp_path / "damaged.core"
    path.write_bytes(raw)
    return path, loads


def test_stack_memsz_with_its_top_bit_flipped_ends_quickly(basic_gcore, tmp_path):
    """The hang of issue 19: 0x21000 -> 0x8000000000021000 sent ::findleaks through every
    page of 2**63 bytes."""
    def flip(raw, loads):
        stack = max((ph for ph in loads if ph.vaddr < 1 << 47), key=lambda ph: ph.vaddr)
        struct.pack_into("<Q", raw, _phdr_field(raw, stack.vaddr, 40), stack.memsz | 1 << 63)

    path, loads = damaged(basic_gcore, tmp_path, flip)
    st = max((ph for ph in loads if ph.vaddr < 1 << 47), key=lambda ph: ph.vaddr)
    r = run(mdbpy_cmd("-S", path, "-e", "::findleaks"))
    assert r.returncode == 0
    err = lines(r.stderr)
    assert err[0] == (f"mdbpy: core file {path}: segment at {st.vaddr:#x} claims "
                      f"{st.memsz | 1 << 63:#x} bytes past the end of the address space; "
                      "cut there")
    assert lines(r.stdout)[-1] == "findleaks: no memory leaks detected"


def test_segment_grown_over_its_neighbour_ends_where_it_begins(basic_gcore, tmp_path):
    def grow(raw, loads):
        struct.pack_into("<Q", raw, _phdr_field(raw, loads[0].vaddr, 40), 1 << 40)

    path, loads = damaged(basic_gcore, tmp_path, grow)
    r = run(mdbpy_cmd("-S", path, "-e", f"::mappings; {loads[1].vaddr:x}/K"))
    assert r.returncode == 0
    assert lines(r.stderr) == [f"mdbpy: core file {path}: 1 segment(s) overlap the next (the "
                               f"first at {loads[0].vaddr:#x}); each address is kept by one, "
                               "the one holding bytes for it"]
    first = lines(r.stdout)[1].split()
    assert (int(first[0], 16), int(first[1], 16)) == (loads[0].vaddr, loads[1].vaddr)


def test_segment_no_process_can_map_is_dropped(basic_gcore, tmp_path):
    def move(raw, loads):
        struct.pack_into("<Q", raw, _phdr_field(raw, loads[0].vaddr, 16), 0x9000000000000000)

    path, loads = damaged(basic_gcore, tmp_path, move)
    r = run(mdbpy_cmd("-S", path, "-e", "::findleaks"))
    assert r.returncode == 0
    assert lines(r.stderr)[0] == (f"mdbpy: core file {path}: segment at 0x9000000000000000 "
                                  f"claims {loads[0].memsz:#x} bytes at an address no process "
                                  "can map; ignored")


# -- output into a closed pipe ----------------------------------------------------------------

def closed_pipe_run(args, input: bytes | None = None):
    """Run with standard output a pipe whose reader is gone: the first write fails (EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return run(args, input=input, stdout=write)
    finally:
        os.close(write)


def test_closed_pipe_ends_quietly_with_status_0(basic_gcore, basic_proc):
    core = basic_gcore[1]
    for args, stdin in [(("-e", "::dcmds"), None), ((), b"::dcmds\n" * 50),
                        (("--help",), None), (("-e", "::dcmds; ::walkers; ::nosuch"), None)]:
        r = closed_pipe_run(mdbpy_cmd("-S", core, *args), stdin)
        assert (r.returncode, r.stderr) == (0, b""), args
    r = closed_pipe_run(mdbpy_cmd("-S", "-p", basic_proc.pid, "-e", "::dcmds"))
    assert (r.returncode, r.stderr) == (0, b"")
    basic_proc.assert_untouched()
    sh = run(["bash", "-c", f"{' '.join(mdbpy_cmd())} -S {core} -e '::dcmds' | head -1; "
                            "echo ${PIPESTATUS[0]}"])
    assert lines(sh.stdout)[1:] == ["0"] and sh.stderr == b""


def test_closed_standard_streams(basic_gcore):
    """A stream the shell closed reads as empty or writes nowhere; the status is the commands'."""
    mdbpy = " ".join(mdbpy_cmd("-S", basic_gcore[1]))
    for redirect, status in (("<&-", 0), ("-e ::status >&-", 0), ("-e ::nosuch 2>&-", 1)):
        r = run(["bash", "-c", f"{mdbpy} {redirect}"])
        assert (r.returncode, r.stderr) == (status, b""), redirect


# -- batch input and arguments ----------------------------------------------------------------

def test_batch_decoding_is_one_rule_on_every_path(basic_gcore, tmp_path):
    core = basic_gcore[1]
    batch = tmp_path / "batch.mdb"
    batch.write_bytes(b"::echo one\n::echo t\xffo\n::echo three\n")
    why = "is not UTF-8 text (byte 0xff at column 9); ignored"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".mdbpyrc").write_bytes(batch.read_bytes())
    for args, stdin, where in [
            (("-f", batch), None, f"line 2 of {batch}"),
            ((), batch.read_bytes(), "line 2 of <stdin>"),
            (("-I", tmp_path, "-e", "$<< batch.mdb"), None, "line 2 of batch.mdb"),
            (("-I", tmp_path, "-e", "$< batch.mdb"), None, "line 2 of batch.mdb")]:
        r = run(mdbpy_cmd("-S", core, *args), input=stdin)
        assert (r.returncode, lines(r.stdout), lines(r.stderr)) == (
            0, ["one ", "three "], [f"mdbpy: {where} {why}"]), args
    r = run(mdbpy_cmd(core, "-e", "::echo four"), env={"HOME": str(home)})
    assert (r.returncode, lines(r.stdout), lines(r.stderr)) == (
        0, ["one ", "three ", "four "],
        [f"mdbpy: {home / '.mdbpyrc'}:2: not UTF-8 text (byte 0xff at column 9); ignored"])
    r = run([*mdbpy_cmd("-S", core), "-e", b"::echo t\xffo"])
    assert (r.returncode, lines(r.stderr)) == (1, [f"mdbpy: line 1 of <string> {why}"])


def test_argument_errors_come_before_any_attach(tmp_path):
    for target in (("-p", "999999999"), ("--demo",)):
        for args, message, status in [
                (("-f", tmp_path / "absent"),
                 f"mdbpy: cannot open {tmp_path / 'absent'}: No such file or directory", 2),
                (("-f", tmp_path), f"mdbpy: cannot open {tmp_path}: Is a directory", 2),
                (("-Z",), "mdbpy: unknown option '-Z'", 2)]:
            r = run(mdbpy_cmd("-S", *target, *args))
            assert (r.returncode, lines(r.stderr)[0], r.stdout) == (status, message, b"")


def test_rc_file_that_is_a_directory_is_one_warning(basic_gcore, tmp_path):
    (tmp_path / ".mdbpyrc").mkdir()
    r = run(mdbpy_cmd(basic_gcore[1], "-e", "::echo hi"), env={"HOME": str(tmp_path)})
    assert (r.returncode, lines(r.stdout), lines(r.stderr)) == (
        0, ["hi "], [f"mdbpy: ignoring {tmp_path / '.mdbpyrc'}: not a regular file"])
