"""Source lines from DWARF (mdbpy/symbols/lines.py, ::whereis, the -l options) against
binutils' addr2line for the fixture and for libc through libc6-dbg's debug file, and against
gdb's bt for the frames of the stacks fixture."""

from __future__ import annotations

import io
import re
import subprocess

import pytest
from support import FIXTURES, without_args

from mdbpy.errors import MdbError
from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.symbols.lines import LineTable, line_table, source_line
from mdbpy.target.core import open_file_target
from mdbpy.target.synthetic import SyntheticTarget

FRAME = re.compile(r"^(?:[0-9a-f]{16} )?(?:\[inlined\] )?(\S+)\(\)(?: at (\S+):(\d+))?$")


def addr2line(path, addrs) -> list[str]:
    """addr2line's `file:line` for each address (discriminators dropped)."""
    out = subprocess.run(["addr2line", "-e", str(path), *map(hex, addrs)], capture_output=True,
                         text=True, check=True).stdout
    return [line.split(" (discriminator")[0] for line in out.splitlines()]


def function_addresses(path, name: str) -> list[int]:
    """The file address of every instruction of a function (capstone over its bytes)."""
    import capstone
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        f.seek(next(elf.address_offsets(sym["st_value"])))
        code = f.read(sym["st_size"])
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [i.address for i in cs.disasm(code, sym["st_value"])]


def run(s: Session, cmd: str) -> str:
    s.out, s.err = io.StringIO(), io.StringIO()
    assert Engine(s).run_string(cmd) == 0 and s.err.getvalue() == "", s.err.getvalue()
    return s.out.getvalue()


@pytest.fixture(scope="module")
def core_session(calls_parked):
    _, core = calls_parked
    with open_file_target(str(core)) as target:
        yield Session(target)


def test_fixture_lines_equal_addr2line(calls_exe):
    table = LineTable(str(calls_exe))
    addrs = function_addresses(calls_exe, "main") + function_addresses(calls_exe, "scaled")
    ours = [f"{f}:{n}" for f, n in map(table.lookup, addrs)]
    assert ours == addr2line(calls_exe, addrs)
    assert {o.rsplit(":", 1)[0] for o in ours} == {f"{FIXTURES}/calls.c"}
    assert len({o.rsplit(":", 1)[1] for o in ours}) >= 6
    assert table.lookup(0) is None


def test_without_aranges_the_cu_ranges_answer(calls_exe, tmp_path):
    """A file without .debug_aranges (clang does not emit it) is searched through the CUs'
    own address ranges."""
    bare = tmp_path / "calls-noaranges"
    subprocess.run(["objcopy", "--remove-section", ".debug_aranges", str(calls_exe), str(bare)],
                   check=True)
    table = LineTable(str(bare))
    assert table._aranges is None
    addrs = function_addresses(bare, "main") + function_addresses(bare, "scaled")
    assert [f"{f}:{n}" for f, n in map(table.lookup, addrs)] == addr2line(calls_exe, addrs)


def test_whereis_on_the_core(core_session, calls_exe):
    s = core_session
    main = s.symbols.lookup("main")
    link = function_addresses(calls_exe, "main")
    bias = main.addr - link[0]
    picks = link[::7]
    want = addr2line(calls_exe, picks)
    assert [run(s, f"0x{a + bias:x}::whereis").strip() for a in picks] == want
    # -l on ::dis appends the same to every instruction
    lines = run(s, "main::dis -l").splitlines()
    assert len(lines) == len(link)
    for line, want in zip(lines, addr2line(calls_exe, link)):
        assert line.endswith(f"  ; {want}"), line


def test_libc_lines_come_from_its_debug_file(core_session):
    """libc.so.6 has no DWARF of its own: libc6-dbg's debug file (found by build-id) has the
    line tables, and one lookup decodes one CU, found through .debug_aranges."""
    s = core_session
    libc = s.symbols.object_named("libc.so.6")
    dbg = libc.find_debug_file()
    assert dbg is not None and dbg.startswith("/usr/lib/debug/")
    table = line_table(libc)
    assert table.path == dbg and table._aranges is not None
    for name in ("read", "__libc_pause"):
        start = s.symbols.lookup(name, "libc.so.6").addr
        addrs = [start, start + 4, start + 9]
        want = addr2line(libc.file, [a - libc.bias for a in addrs])
        assert [run(s, f"0x{a:x}::whereis").strip() for a in addrs] == want
    # the line agrees; for directory 0 binutils 2.40 joins comp_dir twice, mdbpy once (gdb's)
    malloc = s.symbols.lookup("malloc", "libc.so.6").addr
    path, line = source_line(s, malloc)
    want_path, want_line = addr2line(libc.file, [malloc - libc.bias])[0].rsplit(":", 1)
    assert path == "./malloc/malloc.c" and line == int(want_line)
    assert want_path in (path, "./malloc/./malloc/malloc.c")
    assert len(table._rows) <= 4  # only the CUs asked about were decoded


def test_no_line_is_one_line_error(core_session):
    s = core_session
    for cmd, msg in (("0::whereis", "mdbpy: 0x0 is in no load object\n"),
                     ("::whereis", "mdbpy: ::whereis needs an address\n")):
        s.out, s.err = io.StringIO(), io.StringIO()
        assert Engine(s).run_string(cmd) == 1
        assert s.err.getvalue().splitlines()[0] + "\n" == msg
    t = SyntheticTarget([(0x1000, b"\xc3" * 16, "r-xp")])
    s2 = Session(t, out=io.StringIO(), err=io.StringIO())
    s2.symbols.add_symbols("a.out", [Symbol("f", 0x1000, 16)], is_exe=True)
    with pytest.raises(MdbError, match="^a.out has no object file here$"):
        source_line(s2, 0x1004)


def gdb_bt_lines(exe, core) -> dict[int, list[tuple[str, str | None]]]:
    """{tid: [(function, 'file:line' or None)]} of gdb's `thread apply all bt`, inlined
    frames included (::stacks lists them too)."""
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set backtrace past-main on",
                          "-ex", "set print frame-info location-and-address",
                          "-ex", "thread apply all bt", str(exe), str(core)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    stacks: dict[int, list[tuple[str, str | None]]] = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"Thread \d+ \(.*\(LWP (\d+)\)\)", line)
        if m:
            cur = stacks.setdefault(int(m.group(1)), [])
        elif cur is not None and re.match(r"#\d+\s+<signal handler called>", line):
            cur.append(("__restore_rt", None))
        elif cur is not None and (m := re.match(
                r"#\d+\s+0x[0-9a-f]+ in (\S+) \(.*\)(?: at (\S+:\d+))?", line)):
            cur.append((m.group(1), m.group(2)))
    return stacks


def test_stack_lines_equal_gdb_bt(stacks_parked, stacks_exe):
    r, core = stacks_parked
    gdb = gdb_bt_lines(stacks_exe, core)
    with open_file_target(str(core)) as target:
        s = Session(target)
        text = run(s, "::stacks -l")
    ours: dict[int, list[tuple[str, str | None]]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("THREAD "):
            cur = ours.setdefault(int(line.split()[1]), [])
        elif line:
            m = FRAME.match(line)
            assert m, line
            name = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
            cur.append((name, f"{m.group(2)}:{m.group(3)}" if m.group(2) else None))
    assert sorted(ours) == sorted(gdb)
    checked = 0
    for tid, frames in gdb.items():
        assert len(ours[tid]) == len(frames), tid
        for (name, where), (gname, gwhere) in zip(ours[tid], frames):
            if "`" not in name and gwhere is not None:  # the fixture's own frames
                assert (name, where) == (gname, gwhere)
                checked += 1
    assert checked >= 12  # main's chain, the reader's, the signalled thread's
    # $c -l and $C -l print the same lines for the current thread
    with open_file_target(str(core)) as target:
        s = Session(target)
        c = run(s, "$c -l").splitlines()
        cc = run(s, "$C -l").splitlines()
    assert [without_args(line).split(" ", 1)[1] for line in cc] == c
    assert [m.group(2) is not None for m in map(FRAME.match, c)].count(True) >= 5


def test_damaged_line_program_is_one_line_error(calls_exe, tmp_path):
    from elftools.elf.elffile import ELFFile

    data = bytearray(calls_exe.read_bytes())
    with open(calls_exe, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".debug_line")
        off, size = sec["sh_offset"], sec["sh_size"]
    data[off + 4:off + size] = b"\xff" * (size - 4)  # the unit length kept, the rest garbage
    bad = tmp_path / "calls-badlines"
    bad.write_bytes(bytes(data))
    with open_file_target(str(bad)) as target:
        s = Session(target, out=io.StringIO(), err=io.StringIO())
        main = s.symbols.lookup("main").addr
        assert Engine(s).run_string(f"0x{main:x}::whereis") == 1
        err = s.err.getvalue()
        assert err.startswith("mdbpy: ") and err.count("\n") == 1, err
        assert "Traceback" not in err and s.out.getvalue() == ""
