"""Every ptmalloc walker and dcmd on a real glibc heap image damaged at random ends with output
or one-line errors (the damage warnings included), never an internal error or a hang.

The image is a gcore core of the glibc_heap fixture (every kind of free list, a thread arena,
mmapped chunks), taken once. Each example overwrites a few words of one working copy of the
core, in the file itself, and puts them back afterwards. The damage lands on words that hold
something: the main arena (bins, top, the arena ring), the tcache structs and chunk headers and
links in the heaps, the thread arena's heap_info and malloc_state. The values are the ones
garbage usually has: zero, all ones, small counts, one flipped bit, random words, and pointers
elsewhere into the heaps or the main arena (which make cycles and cross-links).

MDBPY_FUZZ_EXAMPLES=N runs N random (not derandomized) examples instead of the fixed 50.
"""

from __future__ import annotations

import io
import os
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import compile_fixture, gcore, start_fixture

from mdbpy.lang.engine import Engine
from mdbpy.session import Session

FLAGS = ("-g", "-O0", "-Wno-use-after-free")
PT_LOAD = 1
COMMANDS = [
    "::ptmalloc", "::arenas", "::heaps", "::malloc_chunks", "::malloc_chunks -f",
    "::tcachebins", "::fastbins", "::unsortedbin", "::smallbins", "::largebins", "::mp_",
    "::malloc_stats", "::mallinfo", "::ptmalloc_verify", "::heap_verify -q", "::heap_stats",
    "::findleaks", "::walk leak", "::walk ptmalloc_chunk | ::malloc_chunk",
    "::walk ptmalloc_inuse", "::walk ptmalloc_free | ::malloc_chunk -v",
    "::walk ptmalloc_arena | ::heaps", "::walk ptmalloc_arena | ::fastbins",
]
EXAMPLES = int(os.environ.get("MDBPY_FUZZ_EXAMPLES", "0"))


def load_segments(path) -> list[tuple[int, int, int]]:
    """(vaddr, filesz, file offset) of each PT_LOAD of an ELF64 core."""
    with open(path, "rb") as f:
        head = f.read(64)
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    out = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", table,
                                                                        i * phentsize)
        if p_type == PT_LOAD and filesz:
            out.append((vaddr, filesz, off))
    return out


def file_offset(segments, addr: int) -> int | None:
    for vaddr, size, off in segments:
        if vaddr <= addr and addr + 8 <= vaddr + size:
            return off + addr - vaddr
    return None


@pytest.fixture(scope="module")
def image(build_dir, tmp_path_factory):
    """(working core copy, exe, [(address, file offset, original word)] of every non-zero
    word that may be damaged, the heaps' ranges, the main arena)."""
    import numpy as np

    from mdbpy.target.core import open_file_target
    from mdbpy_commands.ptmalloc.locate import locate

    exe = compile_fixture("glibc_heap", build_dir, flags=FLAGS, out_name="glibc_heap_fuzz")
    r = start_fixture(exe, "leaks")
    try:
        core = gcore(r.pid, build_dir / "ptmalloc-fuzz")
    finally:
        r.stop()
    s = Session(open_file_target(str(core), exe=str(exe)), out=io.StringIO(),
                err=io.StringIO())
    try:
        state = locate(s)
        heaps = state.heap_ranges()
        main = state.main_arena
        regions = heaps + [(main, main + state.structs["malloc_state"].size)]
    finally:
        s.close()
    segments = load_segments(core)
    words = []
    with open(core, "rb") as f:
        for start, end in regions:
            off = file_offset(segments, start)
            f.seek(off)
            w = np.frombuffer(f.read(end - start), "<u8")
            for i in np.nonzero(w)[0].tolist():
                words.append((start + 8 * i, off + 8 * i, int(w[i])))
    work = tmp_path_factory.mktemp("ptmalloc-fuzz") / "core"
    shutil.copyfile(core, work)
    return work, exe, words, heaps, main


def values(heaps, main, original):
    """What garbage looks like, for a word that held `original`."""
    lo, hi = heaps[0]
    return st.one_of(
        st.just(0), st.just((1 << 64) - 1), st.integers(1, 300),
        st.integers(0, 63).map(lambda b: original ^ (1 << b)),
        st.integers(0, (1 << 64) - 1),
        st.integers(lo, hi - 1).map(lambda a: a & ~15),
        st.integers(0, 0x800).map(lambda d: (main + d) & ~7),
        st.integers(-0x200, 0x200).map(lambda d: (original + 16 * d) & ((1 << 64) - 1)))


@settings(max_examples=EXAMPLES or 50, deadline=None, derandomize=not EXAMPLES, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_glibc_heaps_never_crash(image, data):
    from mdbpy.target.core import open_file_target

    work, exe, words, heaps, main = image
    n = data.draw(st.integers(1, 6), label="words damaged")
    picks = data.draw(st.lists(st.sampled_from(words), min_size=n, max_size=n, unique=True),
                      label="words")
    damage = [(addr, off, old, data.draw(values(heaps, main, old), label=f"0x{addr:x}"))
              for addr, off, old in picks]
    mode = data.draw(st.sampled_from(("auto", "heuristic")), label="locate")
    fd = os.open(work, os.O_RDWR)
    try:
        for _addr, off, _old, new in damage:
            os.pwrite(fd, struct.pack("<Q", new), off)
        out, err = io.StringIO(), io.StringIO()
        s = Session(open_file_target(str(work), exe=str(exe)), out=out, err=err)
        try:
            s.settings["ptmalloc.locate"] = mode
            engine = Engine(s)
            for cmd in COMMANDS:
                engine.run_string(cmd)
                lines = err.getvalue().splitlines()
                assert all(x.startswith("mdbpy: ") or x.startswith("Usage: ")
                           for x in lines), (cmd, lines)
                assert not any("internal error" in x for x in lines), (cmd, lines)
                err.seek(0)
                err.truncate()
        finally:
            s.close()
    finally:
        for _addr, off, old, _new in damage:
            os.pwrite(fd, struct.pack("<Q", old), off)
        os.close(fd)
