"""glibc's mmapped chunks after their mappings changed shape: the ptmalloc_mmapped fixture
mprotects a page in the middle of one chunk (PROT_READ) and the last pages of another
(PROT_NONE), lets the kernel merge the mappings of chunks mmapped back to back, and moves one
chunk into its mapping with posix_memalign. Live, as a gdb core and as a core of mdbpy's own
writer (which leaves the PROT_NONE pages out: unreadable there), through libc's debug
symbols and by the heuristics alone, each chunk is one chunk: listed with its size, named by
::whatis in every part, counted as glibc counts it, never a leak while referenced.

The synthetic tests below check what a real process cannot be made to show on demand: a chunk
whose mapping merged with a thread arena's heap, a PROT_NONE part never read, the scan's
bound and its block reads, and the stop once glibc's count is reached."""

from __future__ import annotations

import struct

import pytest
from support import compile_fixture, engine_session, gcore, proc_maps, run_in, start_fixture

from mdbpy.heap.leaks import find_leaks

PAGE = 4096
CHUNKS = ("split", "guard", "merged0", "merged1", "merged2", "aligned")
HINTS = {name: f' "{name}"' if len(name) >= 4 else "" for name in CHUNKS}
KINDS = ("live", "gcore", "mdbcore")
MODES = ("auto", "heuristic")


@pytest.fixture(scope="module")
def mm_exe(build_dir):
    return compile_fixture("ptmalloc_mmapped", build_dir)


def _planted(exe, build_dir, drop):
    """Yield (Running, {kind: core path}, exe) of a fixture run; kill it after."""
    from mdbpy.target.gcore import write_core
    from mdbpy.target.live import LiveTarget

    r = start_fixture(exe, *([drop] if drop else []))
    try:
        tag = drop or "keep"
        cores = {"gcore": gcore(r.pid, build_dir / f"mmapped-{tag}")}
        path = build_dir / f"mmapped-{tag}.mdbpy"
        t = LiveTarget(r.pid)
        try:
            write_core(t, str(path))
        finally:
            t.close()
        cores["mdbcore"] = path
        yield r, cores, exe
    finally:
        r.stop()


@pytest.fixture(scope="module")
def keep(mm_exe, build_dir):
    yield from _planted(mm_exe, build_dir, None)


@pytest.fixture(scope="module")
def drop(mm_exe, build_dir):
    yield from _planted(mm_exe, build_dir, "split")


def opened(planted, kind: str, mode: str = "auto", core=None):
    r, cores, exe = planted
    return engine_session(r.pid if kind == "live" else None, core or cores.get(kind), exe,
                          **{"ptmalloc.locate": mode})


run = run_in


def _mmap_size(req: int) -> int:
    """glibc's mmapped chunk size for a request: request2size, plus SIZE_SZ, page-rounded."""
    nb = max(32, (req + 8 + 15) & ~15)
    return (nb + 8 + PAGE - 1) & ~(PAGE - 1)


def _expected(r) -> dict[int, int]:
    """{chunk: size} of the planted chunks, from the fixture's own headers; the sizes checked
    against glibc's rounding of each request."""
    out = {}
    for name in CHUNKS:
        addr, size = r.addr(name), r.addr(f"{name}_size")
        prev, req = r.addr(f"{name}_prev"), r.addr(f"{name}_req")
        if name == "aligned":  # mmapped for req + alignment + MINSIZE, then moved by prev
            assert prev and prev % 16 == 0 and (addr + 16) % (1 << 16) == 0
            assert prev + size == _mmap_size(req + (1 << 16) + 32)
        else:
            assert prev == 0 and size == _mmap_size(req)
        out[addr] = size
    return out


def _mapping_lines(pid: int, lo: int, hi: int) -> list[tuple[int, int, str]]:
    return [(a, b, perms) for a, b, perms, _off, _path in proc_maps(pid) if a < hi and lo < b]


def test_the_mappings_have_the_shapes_planted(keep):
    """What the other tests rely on, asserted on /proc/PID/maps: the split chunk spans three
    mappings (rw, r, rw), the guard chunk ends in a PROT_NONE one, the merged chunks lie back
    to back in one mapping, and the mappings of neighbouring chunks merged."""
    r = keep[0]
    exp = _expected(r)
    split, guard = r.addr("split"), r.addr("guard")
    ro, none = r.addr("split_ro"), r.addr("guard_none")
    parts = _mapping_lines(r.pid, split, split + exp[split])
    assert [p for _a, _b, p in parts] == ["rw-p", "r--p", "rw-p"]
    assert parts[1][:2] == (ro, ro + PAGE) and parts[0][1] == ro
    parts = _mapping_lines(r.pid, guard, guard + exp[guard])
    assert [p for _a, _b, p in parts] == ["rw-p", "---p"]
    assert parts[1][:2] == (none, none + 2 * PAGE) == (none, guard + exp[guard])
    assert guard + exp[guard] == split  # the guard's PROT_NONE pages touch the split chunk
    m0, m1, m2 = (r.addr(f"merged{i}") for i in range(3))
    assert m2 + exp[m2] == m1 and m1 + exp[m1] == m0  # back to back, below one another
    (one,) = _mapping_lines(r.pid, m2, m0 + exp[m0])
    assert one[2] == "rw-p" and one[0] <= m2 and m0 + exp[m0] <= one[1]
    # that mapping also holds the aligned chunk's mapping below and the guard chunk above
    aligned = r.addr("aligned") - r.addr("aligned_prev")
    assert one[0] <= aligned and guard < one[1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_each_chunk_is_one_mmapped_chunk(keep, kind, mode):
    r = keep[0]
    exp = _expected(r)
    with opened(keep, kind, mode) as s:
        lines = run(s, "::malloc_chunks -u").splitlines()
        mm = [line.split() for line in lines if line.endswith(" mmapped")]
        assert mm == [[f"{a:016x}", f"{exp[a]:#x}", "-M-", "inuse", "mmapped"]
                      for a in sorted(exp)]
        got = {k.strip(): int(v) for k, v in (line.split(" = ")
                                              for line in run(s, "::mallinfo").splitlines())}
        assert got["hblks"] == int(r.info["hblks"]) == len(exp)
        assert got["hblkhd"] == int(r.info["hblkhd"]) == sum(
            n + r.addr(f"{k}_prev") for k in CHUNKS for n in [exp[r.addr(k)]])
        assert run(s, "::ptmalloc_verify") == "ptmalloc: heap clean\n"
        assert s.err.getvalue() == ""


def _inside(r) -> list[tuple[int, str]]:
    """(address, chunk name) of addresses in every part of every chunk."""
    exp = _expected(r)
    out = []
    for name in CHUNKS:
        c = r.addr(name)
        out += [(c + 16 + 0x100, name), (c + exp[c] - 8, name)]
    ro, none = r.addr("split_ro"), r.addr("guard_none")
    out += [(ro, "split"), (ro + PAGE - 1, "split"), (ro + PAGE, "split"),
            (none, "guard"), (none + PAGE + 8, "guard"), (none - 8, "guard")]
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_whatis_names_the_chunk_in_every_part(keep, kind, mode):
    r = keep[0]
    exp = _expected(r)
    with opened(keep, kind, mode) as s:
        for addr, name in _inside(r):
            c = r.addr(name)
            assert run(s, f"0x{addr:x}::whatis") == (
                f"{addr:x} is {c + 16:x}+{addr - c - 16:x}, allocated from chunk "
                f"0x{exp[c]:x}{HINTS[name]}\n")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_no_leaks_while_every_chunk_is_referenced(keep, kind, mode):
    r = keep[0]
    with opened(keep, kind, mode) as s:
        report = find_leaks(s)  # every allocator, and the anonymous memory none claims
        assert report.leaks == []
        # the guard's PROT_NONE pages (left out of mdbpy's cores, unreadable there) are not
        # scanned: the scan reads readable mappings only
        assert report.warnings == []
        assert run(s, "::findleaks") == "findleaks: no memory leaks detected\n"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_the_dropped_chunk_is_the_one_leak(drop, kind, mode):
    r = drop[0]
    exp = _expected(r)
    split = r.addr("split")
    with opened(drop, kind, mode) as s:
        report = find_leaks(s)  # every allocator, and the anonymous memory none claims
        assert [(k.addr, k.size) for k in report.leaks] == [(split + 16, exp[split] - 16)]
        assert [(g.group, g.count) for g in report.groups] == [
            (f'chunk 0x{exp[split]:x} "split"', 1)]
        assert run(s, "::ptmalloc_verify") == "ptmalloc: heap clean\n"


def _smash(core, copy, addr: int) -> None:
    """A copy of an ELF core with the 16 bytes at addr zeroed in the image."""
    data = bytearray(core.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for k in range(phnum):
        ptype, _flags, off, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + k * phentsize)
        if ptype == 1 and vaddr <= addr and addr + 16 <= vaddr + filesz:
            at = off + addr - vaddr
            data[at:at + 16] = bytes(16)
            copy.write_bytes(data)
            return
    raise AssertionError(f"0x{addr:x} is not in the core")


@pytest.mark.parametrize("mode", MODES)
def test_a_lost_header_is_told_against_glibcs_count(keep, tmp_path, mode):
    """A header zeroed in the core: the chunk is not invented back; one warning says what was
    found against what glibc counts, and ::ptmalloc_verify lists it."""
    r, cores, _exe = keep
    exp = _expected(r)
    lost = r.addr("merged1")
    _smash(cores["gcore"], tmp_path / "core", lost)
    with opened(keep, "gcore", mode, core=tmp_path / "core") as s:
        mp = int(run(s, "::ptmalloc").splitlines()[2].split()[1], 16)
        rest = {a: n for a, n in exp.items() if a != lost}
        mm = [line.split()[0] for line in run(s, "::malloc_chunks").splitlines()
              if line.endswith(" mmapped")]
        assert mm == [f"{a:016x}" for a in sorted(rest)]
        found = sum(exp[r.addr(k)] + r.addr(f"{k}_prev") for k in CHUNKS
                    if r.addr(k) != lost)
        want = (f"mp_ 0x{mp:x} counts {len(exp)} mmapped chunks of 0x{int(r.info['hblkhd']):x} "
                f"bytes (n_mmaps, mmapped_mem); {len(rest)} of 0x{found:x} bytes found")
        assert s.err.getvalue() == f"mdbpy: ptmalloc: {want}\n"
        assert run(s, "::ptmalloc_verify") == f"0x{mp:x}: {want}\n"


# -- synthetic address spaces ------------------------------------------------------------------
def _header(prev: int, size: int) -> bytes:
    return struct.pack("<QQ", prev, size | 2)


def _space(segments):
    from mdbpy.memory import AddressSpace
    from mdbpy.target.base import Mapping
    from mdbpy.target.synthetic import SyntheticTarget

    segs = []
    for start, data, perms in segments:
        segs.append((Mapping(start, start + len(data), perms), data))
    target = SyntheticTarget(segs)
    return AddressSpace(target), target


def test_a_chunk_merged_with_a_thread_heap_and_crossing_a_guard():
    """One mapping holds a chunk, then a thread arena's heap (excluded: walked as a heap),
    then a chunk whose last page is in the PROT_NONE mapping that follows; a chunk after
    that, in an r-x mapping (a JIT's), closes the run."""
    from mdbpy_commands.ptmalloc.chunks import MmapChunk, mmapped_chunks

    base = 0x7F0000000000
    heap = base + 4 * PAGE
    rw = bytearray(12 * PAGE)
    rw[0:16] = _header(0, 4 * PAGE)  # [base, heap)
    rw[4 * PAGE:4 * PAGE + 16] = _header(0, 2 * PAGE)  # inside the heap: never a chunk
    rw[8 * PAGE:8 * PAGE + 16] = _header(0, 5 * PAGE)  # runs 1 page into the guard
    guard = bytes(2 * PAGE)  # PROT_NONE: never read (the space would read it, as live does)
    jit = bytearray(3 * PAGE)
    jit[PAGE:PAGE + 16] = _header(0, 2 * PAGE)
    mem, target = _space([(base, bytes(rw), "rw-p"), (base + 12 * PAGE, guard, "---p"),
                          (base + 14 * PAGE, bytes(jit), "r-xp")])
    reads = []
    real = target.read
    target.read = lambda a, n: (reads.append((a, n)), real(a, n))[1]
    got = mmapped_chunks(mem, [(heap, heap + 4 * PAGE)])
    assert got == [MmapChunk(base, 4 * PAGE, 0), MmapChunk(base + 8 * PAGE, 5 * PAGE, 0),
                   MmapChunk(base + 15 * PAGE, 2 * PAGE, 0)]
    none = (base + 12 * PAGE, base + 14 * PAGE)
    assert not [(a, n) for a, n in reads if a < none[1] and none[0] < a + n]


def test_the_scan_is_bounded_and_reads_in_blocks(monkeypatch):
    """Page starts are read PROBE_WINDOW at a time (a few large reads, not one per page), at
    most MAX_MMAP_SCAN_PAGES of them per run; a header past the bound is not looked at."""
    from mdbpy_commands.ptmalloc import chunks

    base = 0x7F0000000000
    npages = 4096
    data = bytearray(npages * PAGE)
    near, far = 1000, 3000
    data[near * PAGE:near * PAGE + 16] = _header(0, 3 * PAGE)
    data[far * PAGE:far * PAGE + 16] = _header(0, 3 * PAGE)
    mem, target = _space([(base, bytes(data), "rw-p")])
    reads = []
    real = target.read
    target.read = lambda a, n: (reads.append((a, n)), real(a, n))[1]
    got = chunks.mmapped_chunks(mem, [])
    assert [c.addr for c in got] == [base + near * PAGE, base + far * PAGE]
    assert len(reads) < 2 * npages // chunks.PROBE_WINDOW + 8
    monkeypatch.setattr(chunks, "MAX_MMAP_SCAN_PAGES", 2000)
    got = chunks.mmapped_chunks(mem, [])
    assert [c.addr for c in got] == [base + near * PAGE]


def test_the_scan_stops_at_glibcs_count():
    """Once the chunks found add up to mp_'s n_mmaps and mmapped_mem, nothing after them is
    read; a count they do not reach lets the scan go on to the end."""
    from mdbpy_commands.ptmalloc.chunks import mmapped_chunks

    base = 0x7F0000000000
    data = bytearray(64 * PAGE)
    data[0:16] = _header(0, 2 * PAGE)
    data[40 * PAGE:40 * PAGE + 16] = _header(0, 3 * PAGE)
    mem, target = _space([(base, bytes(data), "rw-p")])
    reads = []
    real = target.read
    target.read = lambda a, n: (reads.append((a, n)), real(a, n))[1]
    assert [c.addr for c in mmapped_chunks(mem, [], (1, 2 * PAGE))] == [base]
    assert max(a + n for a, n in reads) <= base + 3 * PAGE
    got = mmapped_chunks(mem, [], (3, 9 * PAGE))
    assert [c.addr for c in got] == [base, base + 40 * PAGE]


@pytest.mark.parametrize("kind", KINDS)
def test_without_libcs_debug_files(keep, drop, kind, tmp_path, monkeypatch):
    """libc's debug files hidden (auto mode falls back to the heuristics, mp_ included): the
    same chunks, counts, names and leaks."""
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", "")
    monkeypatch.setenv("MDBPY_CACHE_DIR", str(tmp_path))
    for planted, leaked in ((keep, None), (drop, "split")):
        r = planted[0]
        exp = _expected(r)
        with opened(planted, kind) as s:
            out = run(s, "::ptmalloc")
            assert "(symbols)" not in out and "mp_ " in out and "(heuristic)" in out
            mm = [line.split()[:2] for line in run(s, "::malloc_chunks").splitlines()
                  if line.endswith(" mmapped")]
            assert mm == [[f"{a:016x}", f"{exp[a]:#x}"] for a in sorted(exp)]
            info = {k.strip(): int(v) for k, v in (line.split(" = ")
                                                   for line in run(s, "::mallinfo").splitlines())}
            assert (info["hblks"], info["hblkhd"]) == (int(r.info["hblks"]),
                                                       int(r.info["hblkhd"]))
            for addr, name in _inside(r):
                assert f" allocated from chunk 0x{exp[r.addr(name)]:x}" in run(
                    s, f"0x{addr:x}::whatis")
            assert run(s, "::ptmalloc_verify") == "ptmalloc: heap clean\n"
            report = find_leaks(s)
            want = [r.addr(leaked) + 16] if leaked else []
            assert [k.addr for k in report.leaks] == want and report.warnings == []
            assert s.err.getvalue() == ""
