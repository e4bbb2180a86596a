"""ELF symbols against real processes and cores: load bias from /proc/PID/maps, PIE and non-PIE
executables, separate debug files (build-id and .gnu_debuglink), libc's debug symbols, the
on-disk cache, and object-file reads. Expected values come from binutils (nm, readelf)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mdbpy.errors import ReadError
from mdbpy.session import Session
from mdbpy.symbols import cache, elf
from mdbpy.target.core import open_file_target
from mdbpy.target.live import LiveTarget
from mdbpy.target.synthetic import SyntheticTarget
from support import compile_fixture, mapped_base, proc_maps, start_fixture

LIBC_DEBUG = "/usr/lib/debug/.build-id"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "symcache"
    monkeypatch.setenv("MDBPY_CACHE_DIR", str(d))
    return d


def nm_values(path: Path | str, dynamic: bool = False) -> dict[str, tuple[int, int]]:
    """name -> (value, size) from binutils nm."""
    args = ["nm", "-S", "--defined-only"] + (["-D"] if dynamic else []) + [str(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 4:
            res.setdefault(f[3].split("@")[0], (int(f[0], 16), int(f[1], 16)))
        elif len(f) == 3:
            res.setdefault(f[2].split("@")[0], (int(f[0], 16), 0))
    return res


def libc_path(pid: int) -> str:
    return next(p for *_rest, p in proc_maps(pid) if os.path.basename(p) == "libc.so.6")


def live_session(pid: int, **kw) -> Session:
    return Session(LiveTarget(pid, stop=False), **kw)


def test_pie_executable_symbols(basic_proc, basic_exe):
    s = live_session(basic_proc.pid)
    bias = mapped_base(basic_proc.pid, basic_exe)
    expect = nm_values(basic_exe)
    exe = s.symbols.object_named("a.out")
    assert exe.is_exe and exe.name == "a.out" and exe.bias == bias
    assert exe.path == str(basic_exe)
    for name in ("main", "global_int", "global_bss", "list_head", "static_counter",
                 "checksum", "sleeper"):
        sym = s.symbols.lookup(name)
        assert (sym.addr, sym.size) == (expect[name][0] + bias, expect[name][1]), name
        assert sym.obj == "a.out"
    main = s.symbols.lookup("main")
    assert s.format_addr(main.addr + 0x12) == "main+0x12"
    assert s.format_addr(main.addr) == "main"
    # bss lies past the file pages, in an anonymous mapping: still part of the object
    bss = s.symbols.lookup("global_bss")
    assert s.format_addr(bss.addr + 100) == "global_bss+0x64"
    assert s.mem.read(bss.addr + 100, 16) == b"\xab" * 16
    head = s.symbols.lookup("list_head")
    assert s.mem.read_ptr(head.addr) == basic_proc.addr("list_head")


def test_libc_symbols_and_debug_file(basic_proc):
    pid = basic_proc.pid
    s = live_session(pid)
    libc = libc_path(pid)
    bias = mapped_base(pid, libc)
    o = s.symbols.object_named("libc.so.6")
    assert o.bias == bias and o.name == "libc.so.6" and not o.is_exe
    assert s.symbols.object_named("libc") is o
    malloc = s.symbols.lookup("malloc", "libc.so.6")
    dyn = nm_values(libc, dynamic=True)
    assert malloc.addr == dyn["malloc"][0] + bias
    assert s.format_addr(malloc.addr) == "libc.so.6`malloc"
    assert s.format_addr(malloc.addr + 0x1a) == "libc.so.6`malloc+0x1a"
    # main_arena is a local symbol: only the libc6-dbg debug file (found by build-id) has it
    bid = o.info.build_id
    debug = f"{LIBC_DEBUG}/{bid[:2]}/{bid[2:]}.debug"
    if not os.path.exists(debug):
        pytest.skip("libc6-dbg is not installed")
    arena = s.symbols.lookup("main_arena")
    assert arena.addr == nm_values(debug)["main_arena"][0] + bias
    assert arena.bind == "local" and arena.type == "object" and arena.obj == "libc.so.6"
    assert o.debug_file == debug
    assert s.format_addr(arena.addr + 8) == "libc.so.6`main_arena+0x8"


def test_lookup_by_address_touches_one_object(basic_proc):
    s = live_session(basic_proc.pid)
    main = s.symbols.lookup("main")
    objs = s.symbols.objects()
    assert [o for o in objs if o._symbols is not None] == []  # by name: no table built
    assert s.symbols.lookup_addr(main.addr + 5) == (main, 5)
    assert [o for o in objs if o._symbols is not None] == [s.symbols.object_named("a.out")]


def test_lookup_by_name_builds_no_table_and_answers_as_the_table(basic_proc):
    """A lookup by name builds only that name's entries (libc's ten thousand are not made
    for five names), and answers exactly as the whole table does: for every name of every
    object's tables, and every versioned name's alias (`stdout` for `stdout@GLIBC_2.2.5`)."""
    from mdbpy.symbols.base import alias_of

    s = live_session(basic_proc.pid)
    try:
        objs = [o for o in s.symbols.objects() if o.columns()]
        assert {o.name for o in objs} >= {"a.out", "libc.so.6"}
        # and a stripped object, with .dynsym alone: libc without its debug file's .symtab
        bare = elf.ElfObject(*(getattr(objs[1], k) for k in ("name", "path", "base", "end",
                                                              "bias", "file", "info",
                                                              "debug_dirs")))
        bare._columns = {k: v for k, v in objs[1].columns().items() if k != "symtab"}
        for o in [*objs, bare]:
            names = {n for t in o.columns().values() for n in t.names}
            names |= {alias_of(n) for n in names} - {""}
            names |= {"no_such_symbol", ""}
            fast = {n: o.lookup(n) for n in names}
            assert o._symbols is None and o._by_name is None, o.name
            o.lookup_addr(o.base)  # an address needs the table: it is built now
            assert o._by_name is not None
            slow = {n: o.lookup(n) for n in names}
            assert fast == slow, o.name
            assert sum(v is not None for v in fast.values()) > 10, o.name
    finally:
        s.close()


def test_refresh_keeps_symbols_already_read(basic_proc):
    s = live_session(basic_proc.pid)
    libc = s.symbols.object_named("libc")
    malloc = s.symbols.lookup("malloc", "libc")
    s.invalidate()
    assert s.symbols.object_named("libc") is libc
    assert s.symbols.lookup("malloc", "libc") is malloc
    assert len(s.symbols.objects()) == 3


def test_non_pie_executable(tmp_path):
    exe = compile_fixture("basic", tmp_path, flags=("-g", "-O0", "-no-pie"), out_name="nopie")
    r = start_fixture(exe)
    try:
        s = live_session(r.pid)
        o = s.symbols.object_named("a.out")
        assert o.bias == 0 and o.is_exe and o.info.etype == 2
        expect = nm_values(exe)
        for name in ("main", "global_long", "global_str", "static_counter"):
            assert s.symbols.lookup(name).addr == expect[name][0], name
        assert s.format_addr(expect["main"][0] + 0x12) == "main+0x12"
    finally:
        r.stop()


@pytest.fixture(scope="module")
def stripped(tmp_path_factory):
    """A stripped executable, its --only-keep-debug file, and the unstripped original."""
    d = tmp_path_factory.mktemp("stripped")
    full = compile_fixture("basic", d, out_name="full")
    debug = d / "full.debug"
    subprocess.run(["objcopy", "--only-keep-debug", full, debug], check=True)
    exe = d / "prog"
    subprocess.run(["strip", "--strip-all", "-o", exe, full], check=True)
    return full, debug, exe


def test_stripped_exe_debug_file_by_build_id(stripped, tmp_path):
    full, debug, exe = stripped
    r = start_fixture(exe)
    try:
        s = live_session(r.pid)
        assert s.symbols.lookup("static_counter") is None  # .dynsym only
        assert s.symbols.lookup("main") is None
        bid = s.symbols.object_named("a.out").info.build_id
        dbgdir = tmp_path / "dbg"
        (dbgdir / ".build-id" / bid[:2]).mkdir(parents=True)
        shutil.copy(debug, dbgdir / ".build-id" / bid[:2] / f"{bid[2:]}.debug")
        s = live_session(r.pid, debug_dirs=[str(dbgdir)])
        bias = mapped_base(r.pid, exe)
        expect = nm_values(full)
        for name in ("main", "static_counter", "checksum"):
            assert s.symbols.lookup(name).addr == expect[name][0] + bias, name
        assert s.symbols.object_named("a.out").debug_file.startswith(str(dbgdir))
        assert s.format_addr(expect["main"][0] + bias + 0x12) == "main+0x12"
    finally:
        r.stop()


def test_stripped_exe_debug_file_by_debuglink(stripped, tmp_path):
    full, debug, _exe = stripped
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(debug, work / "prog.debug")
    exe = work / "prog"
    subprocess.run(["strip", "--strip-all", "--remove-section=.note.gnu.build-id", "-o", exe,
                    full], check=True)
    subprocess.run(["objcopy", "--add-gnu-debuglink=prog.debug", exe], check=True, cwd=work)
    r = start_fixture(exe)
    try:
        s = live_session(r.pid)
        o = s.symbols.object_named("a.out")
        assert o.info.build_id is None
        bias = mapped_base(r.pid, exe)
        assert s.symbols.lookup("static_counter").addr == (
            nm_values(full)["static_counter"][0] + bias)
        assert o.debug_file == str(work / "prog.debug")
        # a debug file whose CRC does not match the link is not used
        (work / "prog.debug").write_bytes(full.read_bytes())
        s = live_session(r.pid)
        assert s.symbols.lookup("static_counter") is None
    finally:
        r.stop()


def test_disk_cache_used_on_second_load(basic_proc, cache_dir, monkeypatch):
    s = live_session(basic_proc.pid)
    libc = s.symbols.object_named("libc.so.6")
    first = s.symbols.lookup("malloc", "libc")
    entry = cache_dir / f"{libc.info.build_id}.syms"
    assert entry.is_file()

    def no_parse(path):
        raise AssertionError(f"parsed {path} despite the cache")

    with monkeypatch.context() as m:
        m.setattr(elf, "parse_symbol_sections", no_parse)
        s2 = live_session(basic_proc.pid)
        assert s2.symbols.lookup("malloc", "libc") == first
        assert s2.symbols.object_named("libc").debug_file == libc.debug_file

    parsed = []
    real = elf.parse_symbol_sections
    monkeypatch.setattr(elf, "parse_symbol_sections",
                        lambda p: parsed.append(p) or real(p))
    for damage in (b"garbage", entry.read_bytes()[:-7], b"MDBPYSYM" + b"\xff" * 40):
        entry.write_bytes(damage)
        parsed.clear()
        s3 = live_session(basic_proc.pid)
        assert s3.symbols.lookup("malloc", "libc") == first
        assert parsed, "a corrupt cache entry must fall back to parsing"
    assert cache.load(libc.info.build_id) is not None  # rewritten by the last parse


def test_read_file(basic_proc, basic_exe):
    s = live_session(basic_proc.pid)
    main = s.symbols.lookup("main")
    data = s.symbols.read_file(main.addr, 16)
    with open(basic_exe, "rb") as f:
        text = next(p for p in s.symbols.object_named("a.out").info.loads()
                    if p.vaddr <= main.value < p.vaddr + p.filesz)
        f.seek(text.offset + main.value - text.vaddr)
        assert data == f.read(16)
    assert data == s.mem.read(main.addr, 16)
    with pytest.raises(ReadError) as e:
        s.symbols.read_file(basic_proc.addr("list_head"), 8)
    assert "\n" not in str(e.value) and "no object file" in str(e.value)
    bss = s.symbols.lookup("global_bss")
    with pytest.raises(ReadError, match="not in object file"):
        s.symbols.read_file(bss.addr, 8)


def test_core_symbols(basic_gcore, basic_exe):
    info, core = basic_gcore
    s = Session(open_file_target(str(core)))
    exe = s.symbols.object_named("a.out")
    assert exe.path == str(basic_exe) and exe.is_exe
    head = s.symbols.lookup("list_head")
    assert s.mem.read_ptr(head.addr) == int(info["list_head"], 16)
    assert head.addr - exe.bias == nm_values(basic_exe)["list_head"][0]
    assert s.symbols.lookup("malloc", "libc.so.6") is not None


def test_absent_file_is_still_an_object():
    """A core's object whose file is missing here keeps its range (from the ELF header in
    memory) without symbols; a mapped file that is not ELF is not an object."""
    head = Path("/lib64/ld-linux-x86-64.so.2").read_bytes()[:4096]  # ET_DYN, no interpreter
    t = SyntheticTarget([(0x10000, head, "r--p", "/nonexistent/libgone.so"),
                         (0x20000, b"\0" * 4096, "r--p", "/nonexistent/data.bin")])
    s = Session(t)
    objs = s.symbols.objects()
    assert [(o.name, o.base, o.file) for o in objs] == [("libgone.so", 0x10000, None)]
    assert objs[0].bias == 0x10000 and objs[0].symbols == []
    assert s.symbols.lookup("main") is None
    assert s.format_addr(0x10010) == "0x10010"
