"""::nm, ::mappings / $m, ::objects and ::status on a live process, line for line against
readelf's symbol table and /proc/PID/maps."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from mdbpy.dcmd import ADDRSPEC, Invocation
from mdbpy.errors import MdbError, UsageError
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.live import LiveTarget
from mdbpy.target.synthetic import SyntheticTarget
from support import mapped_base, proc_maps

READELF_TYPE = {"NOTYPE": "NOTY", "OBJECT": "OBJT", "FUNC": "FUNC", "SECTION": "SECT",
                "FILE": "FILE", "TLS": "TLS", "IFUNC": "FUNC", "COMMON": "COMM"}
READELF_BIND = {"LOCAL": "LOCL", "GLOBAL": "GLOB", "WEAK": "WEAK"}
READELF_VIS = {"DEFAULT": 0, "INTERNAL": 1, "HIDDEN": 2, "PROTECTED": 3}
HEADER = "Value              Size               Type  Bind  Other Shndx    Name"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MDBPY_CACHE_DIR", str(tmp_path / "symcache"))


@pytest.fixture
def session(basic_proc):
    s = Session(LiveTarget(basic_proc.pid, stop=False))
    yield s
    s.close()


def run(s: Session, name: str, *args, addr: int | None = None) -> list[str]:
    out = io.StringIO()
    s.registry.dcmd(name).func(Invocation(s, addr or 0, ADDRSPEC if addr is not None else 0,
                                          list(args), out))
    return out.getvalue().splitlines()


def readelf_symtab(path) -> list[tuple[int, int, str, str, int, str, str]]:
    """(value, size, type, bind, other, ndx, name) of .symtab, in file order."""
    out = subprocess.run(["readelf", "-W", "--syms", str(path)], capture_output=True,
                         text=True, check=True).stdout
    rows, inside = [], False
    for line in out.splitlines():
        if line.startswith("Symbol table"):
            inside = "'.symtab'" in line
            continue
        f = line.split()
        if not inside or len(f) < 7 or not f[0][:-1].isdigit():
            continue
        name = f[7] if len(f) > 7 else ""
        rows.append((int(f[1], 16), int(f[2], 0), READELF_TYPE[f[3]], READELF_BIND[f[4]],
                     READELF_VIS[f[5]], f[6], name))
    return rows


def nm_line(value, size, typ, bind, other, ndx, name) -> str:
    return f"0x{value:016x}|0x{size:016x}|{typ:<5}|{bind:<5}|0x{other:<3x}|{ndx:<8}|{name}"


def expected_nm(pid, exe, keep=lambda row: True) -> list[str]:
    bias = mapped_base(pid, exe)
    lines = []
    for value, size, typ, bind, other, ndx, name in readelf_symtab(exe):
        if not keep((value, size, typ, bind, other, ndx, name)):
            continue
        addr = value if ndx in ("UND", "ABS") or typ == "TLS" else value + bias
        lines.append(nm_line(addr, size, typ, bind, other,
                             {"UND": "UNDEF", "ABS": "ABS", "COM": "COMMON"}.get(ndx, ndx), name))
    return lines


def test_nm_globals_exact(session, basic_proc, basic_exe):
    lines = run(session, "nm", "-g", "a.out")
    assert lines[0] == HEADER
    assert lines[1:] == expected_nm(basic_proc.pid, basic_exe, lambda r: r[3] == "GLOB")
    assert any(line.endswith("|main") for line in lines)


def test_nm_whole_table_and_filters(session, basic_proc, basic_exe):
    full = run(session, "nm", "-h", "a.out")
    assert full == expected_nm(basic_proc.pid, basic_exe)
    undef = run(session, "nm", "-hu", "a.out")
    assert undef and all("|UNDEF   |" in line for line in undef)
    objs = run(session, "nm", "-h", "-t", "objt", "-f", "name", "a.out")
    assert "global_array" in objs and "static_counter" in objs and "main" not in objs
    by_name = run(session, "nm", "-hn", "-f", "name", "a.out")
    assert by_name == sorted(by_name)


def test_addr_nm(session, basic_proc, basic_exe):
    main = session.symbols.lookup("main")
    row = next(r for r in readelf_symtab(basic_exe) if r[6] == "main")
    want = nm_line(main.addr, row[1], "FUNC", "GLOB", 0, row[5], "main")
    assert run(session, "nm", addr=main.addr) == [HEADER, want]
    assert run(session, "nm", addr=main.addr + 0x12) == [HEADER, want]
    assert run(session, "nm", "-d", "-f", "val,name", addr=main.addr) == [
        f"{'Value':<20} Name", f"{main.addr:<20d}|main"]


def test_nm_libc_dynsym_and_nmadd(session):
    malloc = session.symbols.lookup("malloc", "libc.so.6")
    dyn = run(session, "nm", "-D", "-h", "-f", "val,name", "libc.so.6")
    assert f"0x{malloc.addr:016x}|malloc" in dyn
    out = run(session, "nm", "-p", "-t", "func", "libc")
    assert f"0x{malloc.addr:x}::nmadd -f -s 0x{malloc.size:x} malloc" in out


def test_nm_errors(session):
    with pytest.raises(UsageError):
        run(session, "nm", "-d", "-x")
    with pytest.raises(UsageError):
        run(session, "nm", "-t", "bogus")
    with pytest.raises(MdbError, match="unknown object 'nosuch'"):
        run(session, "nm", "nosuch")
    with pytest.raises(MdbError, match="no symbol corresponds"):
        run(session, "nm", addr=0x10)


def display(perms: str, path: str) -> str:
    if not path:
        return "[ shmem ]" if perms[3] == "s" else "[ anon ]"
    if path.startswith("["):
        return "[ stack ]" if path.startswith("[stack") else f"[ {path[1:-1]} ]"
    return path


def test_mappings_equal_proc_maps(session, basic_proc):
    lines = run(session, "mappings")
    assert lines[0] == "            BASE            LIMIT             SIZE NAME"
    want = [f"{a:>16x} {b:>16x} {b - a:>16x} {display(perms, p)}"
            for a, b, perms, _off, p in proc_maps(basic_proc.pid)]
    assert lines[1:] == want
    assert run(session, "$m") == lines
    heap = next(line for line in want if line.endswith("[ heap ]"))
    assert run(session, "mappings", addr=basic_proc.addr("list_head")) == [lines[0], heap]
    libc = [line for line in want if line.endswith("/libc.so.6")]
    assert len(libc) >= 3
    assert run(session, "mappings", "libc.so.6")[1:] == libc
    assert run(session, "mappings", "libc")[1:] == libc
    with pytest.raises(MdbError, match="no mapping contains"):
        run(session, "mappings", addr=0x10)


def test_objects(session, basic_proc, basic_exe):
    lines = run(session, "objects")
    assert lines[0] == "            BASE            LIMIT             SIZE NAME"
    maps = proc_maps(basic_proc.pid)
    exe_maps = [i for i, m in enumerate(maps) if m[4] == str(basic_exe)]
    start = maps[exe_maps[0]][0]
    # the executable's range runs over its bss, the anonymous mapping after its file pages
    bss = maps[exe_maps[-1] + 1]
    assert bss[4] == "" and bss[0] == maps[exe_maps[-1]][1]
    assert lines[1] == f"{start:>16x} {bss[1]:>16x} {bss[1] - start:>16x} {basic_exe}"
    names = [line.split()[-1] for line in lines[1:]]
    assert [os.path.basename(n) for n in names] == ["basic", "libc.so.6",
                                                     "ld-linux-x86-64.so.2"]
    bid = session.symbols.object_named("libc").info.build_id
    assert f"{names[1]:<28} {bid}" in run(session, "objects", "-v")


def test_status_loads_no_symbols(basic_proc):
    """::status is the start-up benchmark: no symbol tables, no pyelftools, no numpy."""
    code = (
        "import sys\n"
        "from mdbpy.session import Session\n"
        "from mdbpy.target.live import LiveTarget\n"
        "from mdbpy.dcmd import Invocation\n"
        f"s = Session(LiveTarget({basic_proc.pid}))\n"
        "s.registry.dcmd('status').func(Invocation(s, 0, 0, [], sys.stdout))\n"
        "s.close()\n"
        "print(sorted(m for m in ('elftools', 'numpy', 'mdbpy.symbols.elf') "
        "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == f"debugging PID {basic_proc.pid} (64-bit)"
    assert out[-1] == "[]"
    basic_proc.assert_untouched()


def test_synthetic_status_and_private_nm():
    s = Session(SyntheticTarget([(0x1000, b"\0" * 64)]), sysroot="/tmp/root")
    s.symbols.add_symbols("a.out", [Symbol("thing", 0x1010, 8, "object")], is_exe=True)
    assert run(s, "status") == ["debugging synthetic (64-bit)", "sysroot: /tmp/root"]
    assert run(s, "nm", "-P", "-h") == [nm_line(0x1010, 8, "OBJT", "GLOB", 0, "", "thing")]
    assert run(s, "mappings") == [
        "            BASE            LIMIT             SIZE NAME",
        f"{0x1000:>16x} {0x1040:>16x} {0x40:>16x} [ anon ]"]
