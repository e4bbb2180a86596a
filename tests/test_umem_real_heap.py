"""Real libumem heaps with many buffers, on every build in ../shared/umem/ (tests/umem_builds.py),
live and as gcore cores: a multi-threaded malloc program that frees many buffers (they sit in
the CPU and rseq magazines, the depot and v2's per-CPU depot lists, or v2's per-thread caches,
and must count as free everywhere), the same at 200,000 buffers, and a program on libumem's
own interface (umem_cache_create, umem_alloc) linked with the shared libumem.

Every program writes the addresses of the leaks it plants to a file: ::findleaks must report
exactly those, and ::umem_verify nothing but the one damaged buffer planted.
"""

from __future__ import annotations

import pytest
from umem_builds import (assert_only_damage, build_params, compile_c, hexes, mdb, started,
                         table_totals, targets)

MALLOC_TAG = 16  # malloc's header before the pointer it returns (every size here is > 16)


def planted(path) -> set[int]:
    """The buffers behind the leaked pointers the program wrote down."""
    with open(path) as f:
        return {int(x, 16) - MALLOC_TAG for x in f.read().split()}


def churn(build, tmp_path_factory, threads: int, count: int, every: int, frees: int,
          debug: bool = True):
    """fixtures/umem_churn.c started with the build's malloc preloaded: (Running, core, leak
    file)."""
    d = tmp_path_factory.mktemp(f"umem_churn_{build.name}")
    leaks = d / "leaks.txt"
    r, core = started(compile_c("umem_churn.c", d / "churn"), threads, count, every, frees,
                      leaks, cores=d, preload=build.malloc, debug=debug)
    return r, core, leaks


def assert_exact(r, core, leaks, verify_budget=None) -> None:
    """::findleaks reports exactly the planted leaks (no mmap rows), ::umem_verify exactly the
    write after free, on the live process and on its core."""
    freed = r.addr("freed") - MALLOC_TAG
    for t in targets(r, core):
        out = mdb(t, "::findleaks; ::walk leakbuf; ::umem_verify")
        assert " MMAP" not in out
        assert hexes(out) == planted(leaks)
        assert_only_damage(t, out, freed)


def churned(*args, debug: bool = True):
    """A module fixture of fixtures/umem_churn.c run with these arguments on each build:
    (build, Running, core, leak file)."""
    @pytest.fixture(scope="module", params=build_params())
    def fixture(request, tmp_path_factory):
        r, core, leaks = churn(request.param, tmp_path_factory, *args, debug=debug)
        try:
            yield request.param, r, core, leaks
        finally:
            r.stop()

    return fixture


# -- many threads, many frees ----------------------------------------------------------------
threads = churned(4, 5000, 10, 20000)
# the same without UMEM_DEBUG: v2 then keeps freed buffers in each thread's per-thread cache
# (bins and magazines, reached through the TLS pointer thread_ptc)
no_debug = churned(4, 5000, 10, 20000, debug=False)


def test_threads_exact_leaks_and_verify(threads):
    _build, r, core, leaks = threads
    assert len(planted(leaks)) == 4 * 500
    assert_exact(r, core, leaks)


def test_threads_freed_buffers_are_free_everywhere(threads):
    """4 threads x 5000 buffers are allocated (kept or leaked), and each thread's 20,000
    freed ones are not: the umem walk, ::umastat's `in use` and findleaks agree on it, and
    the magazine layer holds freed buffers (walked as freemem)."""
    build, r, core, _leaks = threads
    for t in targets(r, core):
        caches = [x.split()[0] for x in mdb(t, "::umem_cache").splitlines()
                  if " umem_alloc_" in x]
        counts = mdb(t, "".join(f"{c}::walk umem ! wc -l; " for c in caches))
        allocated = sum(int(x) for x in counts.split())
        # the program's buffers, its four leak arrays, stdio's buffer; nothing freed
        assert 4 * 5000 <= allocated <= 4 * 5000 + 16, allocated
        stat = mdb(t, "::umastat")
        inuse = sum(int(x.split()[2]) for x in stat.splitlines() if x.startswith("umem_alloc_"))
        assert inuse == allocated
        trace = mdb(t, "::umem_debug; ::walk umem ! wc -l")
        held = sum(int(x.split()[-2]) for x in trace.splitlines()
                   if x.startswith("umem debug: magazine layer: "))
        assert held > 1000, trace


def test_per_thread_caches_hold_free_buffers(no_debug):
    """Without auditing nothing names a leak's caller (CALLER `?`), and without redzones a
    freed buffer's free-list link stays in the unused tail of the buffer when it is handed out
    again: a conservative scan (mdb's too) follows it, so some leaks hide behind stale links.
    What must hold: no false leak, no mmap row, and the buffers in per-thread caches counted
    free (out of the umem walk, in ::umastat's `in ptc`)."""
    build, r, core, leaks = no_debug
    for t in targets(r, core):
        out = mdb(t, "::findleaks; ::walk leakbuf; ::umastat")
        assert " MMAP" not in out
        assert hexes(out) <= planted(leaks)
        rows = [x.split() for x in out.splitlines() if x.startswith("umem_alloc_")]
        inuse = sum(int(x[2]) for x in rows)
        assert 4 * 5000 <= inuse <= 4 * 5000 + 20, inuse
        ptc = [x[3] for x in rows]
        if build.v2:  # freed buffers of up to 2048 bytes wait in per-thread caches
            assert sum(int(x) for x in ptc if x != "-") > 1000, ptc
            c64 = cache_addr(t, "umem_alloc_64")
            walked, alloc, free = (hexes(x) for x in mdb(
                t, f"::walk umem_ptc_64; ::echo --; {c64}::walk umem; ::echo --; "
                   f"{c64}::walk freemem").split("--"))
            assert walked and not walked & alloc and walked <= free
        else:
            assert set(ptc) == {"-"}


def cache_addr(target, name: str) -> str:
    """A cache's address, from ::umem_cache."""
    return next(x.split()[0] for x in mdb(target, "::umem_cache").splitlines()
                if x.split()[1:2] == [name])


# -- 200,000 buffers -------------------------------------------------------------------------
big = churned(2, 100000, 100, 20000)


def test_200k_buffers_exact(big):
    _build, r, core, leaks = big
    assert len(planted(leaks)) == 2000
    assert_exact(r, core, leaks)


def test_buffer_count_is_the_tables(big):
    """findleaks -v's maximum buffers is counted from the caches' contents without building
    the table of every buffer: the same number the table has, live and as a core."""
    import io

    from mdbpy.heap.model import allocators
    from mdbpy.session import Session
    from mdbpy.target.core import open_file_target
    from mdbpy.target.live import LiveTarget

    _build, r, core, _leaks = big
    for target in (lambda: LiveTarget(r.pid), lambda: open_file_target(str(core))):
        s = Session(target(), out=io.StringIO(), err=io.StringIO())
        try:
            (umem,) = [a for a in allocators(s) if a.name == "umem"]
            counted = umem.buffer_count()
            assert umem._buffers is None  # counted, not built
            assert counted == len(umem.buffers()) > 200000
        finally:
            s.close()


def test_200k_buffers_exact_with_a_tiny_page_cache(big, monkeypatch):
    """Correctness does not hang on the page cache: with 64 KiB kept between reads (a
    200,000-buffer cache walk needs hundreds of MiB), every read still sees all its pages."""
    import mdbpy
    from mdbpy.heap import gather

    _build, r, core, leaks = big
    monkeypatch.setattr(gather, "MAX_CACHED", 64 << 10)
    with mdbpy.open_core(str(core)) as dbg:
        out = dbg.run("::findleaks; ::walk leakbuf; ::umem_verify")
    assert hexes(out) == planted(leaks)
    bad = [x for x in out.splitlines() if not x.endswith(" clean") and "corrupt" in x]
    assert len(bad) == 1 and bad[0].startswith("umem_alloc_80 ") and \
        bad[0].endswith(" 1 corrupt buffer")


def test_200k_compiled_page_reads_equal_pythons(big, monkeypatch):
    """The compiled walks and row copies read the pages they miss from the process's or the
    core's file themselves (mdbpy/heap/gather.py's _Source); without a source Python reads
    them. Both give every cache's buffers, states and bufctls and the damage found alike, and
    rows many to a page running off a writable mapping into the hole after it the same bytes
    and the same unreadable rows."""
    import io

    import numpy as np

    from mdbpy.heap import gather
    from mdbpy.session import Session
    from mdbpy.target.core import CoreTarget
    from mdbpy.target.live import LiveTarget
    from mdbpy_commands.umem.contents import cache_contents
    from mdbpy_commands.umem.damage import damage
    from mdbpy_commands.umem.state import Umem

    _build, r, core, _leaks = big
    for open_target in (lambda: LiveTarget(r.pid), lambda: CoreTarget(str(core))):
        seen = []
        for compiled in (True, False):
            if not compiled:
                monkeypatch.setattr(gather._Source, "of", classmethod(lambda cls, *a: None))
            s = Session(open_target(), out=io.StringIO(), err=io.StringIO())
            try:
                u = Umem.get(s)
                got = [cache_contents(u, c) for c in u.caches()]
                g = gather.session_gather(s)
                with g.opened_source() as src:
                    assert (src is not None) == compiled
                maps = s.mem.mappings()
                edge = next(m.end for m, n in zip(maps, maps[1:]) if m.readable and
                            m.writable and m.end - m.start >= 64 << 10 and n.start > m.end + 8192)
                addrs = np.arange(edge - (64 << 10), edge + 4096, 16, dtype=np.uint64)
                rows, ok = g.rows(addrs, 24)
                seen.append((got, rows, ok, damage(s).untrusted()))
            finally:
                s.close()
            monkeypatch.undo()
        (a, rows_a, ok_a, dmg_a), (b, rows_b, ok_b, dmg_b) = seen
        assert len(a) == len(b) and sum(len(x.bufs) for x in a) > 200_000
        for x, y in zip(a, b):
            for f in ("bufs", "alloc", "ctl", "in_mag"):
                assert np.array_equal(getattr(x, f), getattr(y, f)), (x.cache, f)
        assert dmg_a == dmg_b
        # the rows before the last 24 bytes of the mapping are read, the rest are not
        assert ok_a.tolist() == ok_b.tolist() == (addrs + np.uint64(24) <= edge).tolist()
        assert np.array_equal(rows_a, rows_b)


# -- libumem's own interface, linked -----------------------------------------------------------
@pytest.fixture(scope="module", params=build_params())
def caches(request, tmp_path_factory):
    """fixtures/umem_caches.c linked with the build's shared libumem by its full path (the
    build's lib/ has no unversioned libumem.so, so -lumem would take the static archive), with
    a run path to it."""
    build = request.param
    d = tmp_path_factory.mktemp(f"umem_caches_{build.name}")
    lib = build.shared()
    exe = compile_c("umem_caches.c", d / "caches", str(lib), f"-Wl,-rpath,{lib.parent}",
                    build=build)
    leaks = d / "leaks.txt"
    r, core = started(exe, 5000, leaks, cores=d)
    try:
        with open(f"/proc/{r.pid}/maps") as f:
            assert "libumem_malloc" not in f.read()
        yield build, r, core, leaks
    finally:
        r.stop()


def test_cache_create_program(caches):
    """umem_cache_create's cache is walked by name, its objects returned to it are free, and
    ::findleaks reports exactly the 500 leaked objects and 312 umem_alloc buffers, grouped by
    cache (with the allocating function where the build records stacks)."""
    build, r, core, leaks_file = caches
    with open(leaks_file) as f:
        leaks = {int(x, 16) for x in f.read().split()}
    cache = r.addr("cache")
    for t in targets(r, core):
        out = mdb(t, f"{cache:x}::umem_cache; ::walk node_cache ! wc -l; ::findleaks; "
                     "::walk leakbuf; ::umem_verify")
        assert f"{cache:016x} node_cache " in out
        assert out.splitlines()[2].strip() == str(5000 - 1250)  # 1250 objects freed
        assert hexes(out) == leaks
        assert table_totals(out) == [f"{500 + 312} buffers, {500 * 56 + 312 * 32} bytes"]
        rows = [x.split() for x in out.splitlines() if x.startswith("0000") and
                len(x.split()) == 4]
        assert sorted((int(x[1]), x[3].split("+")[0]) for x in rows) == sorted(
            [(312, "work" if build.v2 else "0"), (500, "work" if build.v2 else "0")])
        assert all(x.endswith(" clean") for x in out.splitlines()
                   if x.startswith(("node_cache ", "umem_alloc_")))
        long = mdb(t, "::findleaks -d")
        assert "node_cache leak: 500 buffers, 56 bytes each, 28000 bytes total\n" in long
