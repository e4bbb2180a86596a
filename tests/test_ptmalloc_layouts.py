"""ptmalloc's descriptors and pure helpers: the built-in layouts equal DWARF (libc6-dbg) for
the running glibc, the version string parser, size classes, vtable names, and the chunk walk's
recovery on synthetic heaps."""

from __future__ import annotations

import struct

import pytest

from mdbpy.session import Session
from mdbpy.target.synthetic import SyntheticTarget
from mdbpy_commands.ptmalloc.allocator import demangle_vtable
from mdbpy_commands.ptmalloc.bins import largebin_index
from mdbpy_commands.ptmalloc.chunks import walk_heap
from mdbpy_commands.ptmalloc.layouts import PTMALLOC_LAYOUTS
from mdbpy_commands.ptmalloc.locate import bind_structs
from mdbpy_commands.ptmalloc.version import parse_release

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def _debug_file():
    from mdbpy.symbols import debuginfo
    from mdbpy.symbols.elf import build_id_of

    bid = build_id_of(LIBC)
    return debuginfo.by_build_id(bid, ["/usr/lib/debug"], build_id_of) if bid else None


def test_builtin_layouts_equal_dwarf():
    """The DWARF oracle: every struct, every field, offset and size."""
    from mdbpy_commands.ptmalloc.version import release_of_file

    dbg = _debug_file()
    if dbg is None:
        pytest.skip("libc6-dbg is not installed")
    version = release_of_file(LIBC)
    builtin, dwarf = bind_structs(version), bind_structs(version, dbg)
    for name in PTMALLOC_LAYOUTS.structs:
        b, d = builtin[name], dwarf[name]
        assert d.origin.startswith("DWARF"), name
        assert b.size == d.size, name
        assert {f: (x.offset, x.size) for f, x in b.fields.items()} == \
               {f: (x.offset, x.size) for f, x in d.fields.items()}, name


@pytest.mark.parametrize("version,sizes", [
    ((2, 27), {"tcache_perthread_struct": 0x240, "tcache_entry": 8, "_heap_info": 0x20,
               "malloc_par": 0x70, "malloc_state": 0x898}),
    ((2, 31), {"tcache_perthread_struct": 0x280, "tcache_entry": 16, "_heap_info": 0x20,
               "malloc_par": 0x70}),
    ((2, 36), {"tcache_perthread_struct": 0x280, "_heap_info": 0x30, "malloc_par": 0x88}),
    ((2, 42), {"tcache_perthread_struct": 76 * 2 + 76 * 8}),
])
def test_sizes_follow_the_version(version, sizes):
    b = bind_structs(version)
    assert {n: b[n].size for n in sizes} == sizes


def test_release_string():
    assert parse_release(b"\0GNU C Library (Debian GLIBC 2.36-9+deb12u14) stable release "
                         b"version 2.36.\n") == (2, 36)
    assert parse_release(b"GNU C Library (GNU libc) development release version 2.42.9000.") \
        == (2, 42)
    assert parse_release(b"libc.so.6 version 2.36") is None


def test_size_classes_and_names():
    assert [largebin_index(s) for s in (0x400, 0x610, 0x1010, 0x20000, 0x100000)] == \
           [64, 72, 99, 123, 126]
    assert demangle_vtable("_ZTV6Widget") == "Widget"
    assert demangle_vtable("_ZTVN2ns6WidgetE") == "ns::Widget"
    assert demangle_vtable("_ZTV9") is None


def _heap(chunks: list[tuple[int, int]], top: int) -> bytes:
    """Headers (prev_size, size|flags) laid end to end, then the top chunk's header."""
    out = bytearray()
    for size, raw in chunks:
        out += struct.pack("<QQ", 0, raw) + bytes(size - 16)
    return bytes(out + struct.pack("<QQ", 0, top))


def test_walk_resyncs_past_a_smashed_header():
    base = 0x10000
    data = _heap([(0x20, 0x21), (0x30, 0x4141414141414141), (0x40, 0x41), (0x20, 0x21)],
                 0x1001)
    s = Session(SyntheticTarget([(base, data + bytes(0x1000))]), load_builtin=False)
    w = walk_heap(s.mem, base, base + 0xB0, base + 0xB0)
    assert [int(a) - base for a in w.addr] == [0, 0x20, 0x50, 0x90]
    assert [int(x) for x in w.size] == [0x20, 0x30, 0x40, 0x20]
    assert w.problems == [(base + 0x20, base + 0x50, f"chunk 0x{base + 0x20:x}: bad size 0x4141414141414141"
                                        f" (smashed header?); walk resumes at 0x{base + 0x50:x}")]
    assert list(w.bad) == [False, True, False, False]
    assert list(w.next_prev_inuse) == [True, True, True, True]


def test_walk_reports_a_size_running_past_top():
    base = 0x10000
    data = _heap([(0x20, 0x21), (0x20, 0x41)], 0x1001)
    s = Session(SyntheticTarget([(base, data + bytes(0x1000))]), load_builtin=False)
    w = walk_heap(s.mem, base, base + 0x40, base + 0x40)
    assert [int(a) - base for a in w.addr] == [0, 0x20]
    assert w.problems == [(base + 0x20, base + 0x40, f"chunk 0x{base + 0x20:x}: size 0x40 runs past the "
                                        f"top chunk at 0x{base + 0x40:x}")]


def test_type_hints_never_read_a_pointer_as_text():
    """A chunk whose first word points into the address space is not a string, even when
    its low bytes are printable ('0TxlYU' then two NULs); real text still is."""
    import io

    from mdbpy.session import Session
    from mdbpy.target.base import Mapping
    from mdbpy.target.synthetic import SyntheticTarget
    from mdbpy_commands.ptmalloc.allocator import type_hints

    pointer = int.from_bytes(b"0TxlYU\0\0", "little")
    base = pointer & ~0xFFF
    data = bytearray(0x1000)
    data[0x10:0x18] = pointer.to_bytes(8, "little")
    data[0x40:0x47] = b"hello!\0"
    s = Session(SyntheticTarget([(Mapping(base, base + 0x1000, "rw-p"), data)]),
                out=io.StringIO(), err=io.StringIO())
    assert type_hints(s, [base + 0x10, base + 0x40], [0x20, 0x20]) == ["", '"hello!"']


def test_a_dwarf_layout_that_differs_from_the_builtin_one_is_shown():
    """DWARF wins, and ::layout says where the builtin descriptor was wrong: a moved field, a
    resized one, one DWARF does not have, a different struct size."""
    from mdbpy.layout.bind import DwarfStruct, format_layout

    builtin = bind_structs((2, 36))["_heap_info"]
    members = {n: (f.offset, f.size) for n, f in builtin.fields.items()}
    members["size"] = (0x18, 8)  # moved from 0x10
    members["mprotect_size"] = (0x20, 4)  # 8 bytes in the descriptor
    del members["ar_ptr"]
    bound = bind_structs((2, 36), {"_heap_info": DwarfStruct(0x38, members, "doctored")})
    b = bound["_heap_info"]
    assert b.differs == ["size 0x38, builtin 0x30", "ar_ptr is not in DWARF: dropped",
                         "size at 0x18, builtin 0x10",
                         "mprotect_size at 0x20, builtin 0x18",
                         "mprotect_size of 0x4 bytes, builtin 0x8"]
    text = format_layout(b).splitlines()
    assert text[-6:] == ["  DWARF differs from the builtin descriptor (DWARF's layout is used):",
                         *[f"    {d}" for d in b.differs]]


def test_dwarf_layouts_are_cached_by_build_id_and_checked(tmp_path):
    """The structs bound from libc's DWARF are kept in `<build-id>.layouts` after the first
    session; later sessions bind the same layouts from it without opening the DWARF. A
    damaged entry, or one whose debug file changed since (size or time), is read again from
    the DWARF and rewritten; the output never changes."""
    import json
    import subprocess

    from support import run_mdbpy

    from mdbpy.symbols.elf import build_id_of

    dbg = _debug_file()
    if dbg is None:
        pytest.skip("libc6-dbg is not installed")
    sleeper = subprocess.Popen(["sleep", "60"])
    env = {"MDBPY_CACHE_DIR": str(tmp_path)}
    entry = tmp_path / f"{build_id_of(LIBC)}.layouts"
    try:
        def shown() -> str:
            r = run_mdbpy("-p", sleeper.pid, "-e", "::layout malloc_state", env=env)
            assert r.returncode == 0 and r.stderr == "", r.stderr
            return r.stdout

        first = shown()
        assert first.startswith("struct malloc_state (size 0x898, align 8) from DWARF "
                                "libc.so.6 debug info\n"), first
        kept = json.loads(entry.read_text())
        assert kept["path"] == dbg and kept["structs"]["malloc_state"][0] == 0x898
        assert kept["structs"]["malloc_state"][1]["top"] == [0x60, 8]
        assert shown() == first
        for damage in (b"{not json", json.dumps({**kept, "stamp": [1, 2]}).encode(),
                       json.dumps({**kept, "structs": {"malloc_state": ["x", {}]}}).encode()):
            entry.write_bytes(damage)
            assert shown() == first
            assert json.loads(entry.read_text()) == kept  # read again and rewritten
    finally:
        sleeper.kill()
        sleeper.wait()
