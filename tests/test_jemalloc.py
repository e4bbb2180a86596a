"""The jemalloc module on real jemalloc 5.3.0 heaps, live and as cores: detection, the planted
leaks exactly, the region walk against jemalloc's own counters, ::whatis, ::heap_verify, and
the one-line messages of a stripped jemalloc and of a target without one.

fixtures/jemalloc_heap.c plants 12 leaks (10 from the main thread, 2 from a second one, three
of them large) among ~23,000 kept regions, with regions freed into both threads' tcaches, and
prints jemalloc's stats.allocated and tcache_bytes after an epoch refresh: the oracle for the
walk (bytes of regions out of their slabs, and of those the tcaches hold) is jemalloc's own.
"""

from __future__ import annotations

import pytest
from jemalloc_builds import compile_debian, compile_dwarf
from support import compile_fixture, gcore, one_line_stderr, run_mdbpy, start_fixture

VERSION = "5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c"


@pytest.fixture(scope="module", params=["dwarf", "static"])
def heap(request, tmp_path_factory):
    """The fixture linked with the -g build (shared, or static into the executable), running,
    and a core of it: (running, exe, core)."""
    d = tmp_path_factory.mktemp("jemalloc")
    exe = compile_dwarf("jemalloc_heap", d, static=request.param == "static")
    run = start_fixture(exe)
    try:
        run.info["bins"] = {int(b): (int(r), int(n)) for b, r, n in
                            (w.split(":") for w in run.info["bins"].split(","))}
        core = gcore(run.pid, d / "core")
        yield run, exe, core
    finally:
        run.stop()


def _args(heap, where):
    run, exe, core = heap
    return ("-p", run.pid) if where == "live" else (exe, core)


def _leaked(out: str) -> set[int]:
    """The BUFFER column of ::findleaks' rows."""
    rows = [ln.split() for ln in out.splitlines()]
    return {int(r[2], 16) for r in rows if len(r) == 4 and r[1] == "1" and r[0].isalnum()
            and len(r[0]) == 16}


@pytest.mark.parametrize("where", ["live", "core"])
def test_findleaks_exact(heap, where):
    run = heap[0]
    r = run_mdbpy(*_args(heap, where), "-e", "::findleaks")
    assert one_line_stderr(r.stderr) == ""
    planted = {int(a, 16) for a in run.info["leaks"].split(",")}
    assert len(planted) == 12
    assert _leaked(r.stdout) == planted
    assert "Total      12 buffers" in r.stdout
    assert "MMAP" not in r.stdout


@pytest.mark.parametrize("where", ["live", "core"])
def test_jemalloc_dcmd(heap, where):
    r = run_mdbpy(*_args(heap, where), "-e", "::jemalloc")
    assert one_line_stderr(r.stderr) == ""
    lines = r.stdout.splitlines()
    obj = "a.out" if "static" in str(heap[1]) else "libjemalloc.so.2"
    assert lines[0] == f"jemalloc {VERSION} in {obj}"
    assert lines[1] == "prefix      '' (public), 'je_' (internal)"
    assert f"object      {obj} (defines mallctlnametomib)" in lines
    assert "arenas      2" in lines
    assert "tcaches     2" in lines


@pytest.mark.parametrize("where", ["live", "core"])
def test_regions_equal_jemalloc_stats(heap, where):
    """Bytes of regions out of their slabs (and large extents in use) == stats.allocated;
    bytes of the regions the tcaches hold (FREE for the program) == tcache_bytes."""
    import numpy as np

    import mdbpy
    from mdbpy.heap.model import ALLOC, FREE
    from mdbpy_commands.jemalloc.allocator import JemallocAllocator
    from mdbpy_commands.jemalloc.extents import extents
    from mdbpy_commands.jemalloc.regions import regions
    from mdbpy_commands.jemalloc.tcache import cached

    run, exe, core = heap
    d = mdbpy.attach(run.pid) if where == "live" else mdbpy.open_core(str(core), str(exe))
    try:
        s = d.session
        found = [a for a in s.allocators() if isinstance(a, JemallocAllocator)]
        assert [a.name for a in s.allocators()] == ["jemalloc"]
        a = found[0]
        r = regions(a.state, extents(s, a.state))
        held = np.isin(r.base, cached(s, a.state).ptr)
        assert int(r.size[r.out].sum()) == int(run.info["allocated"])
        assert int(r.size[held].sum()) == int(run.info["tcache_bytes"])
        t = a.buffers()
        assert int((t.state == FREE).sum()) == int((~r.out).sum()) + int(held.sum())
        assert int(t.size[t.state == ALLOC].sum()) == (int(run.info["allocated"])
                                                        - int(run.info["tcache_bytes"]))
        assert a.verify() == []
    finally:
        d.close()


@pytest.mark.parametrize("where", ["live", "core"])
def test_whatis(heap, where):
    run = heap[0]
    leaks = run.info["leaks"].split(",")
    cmds = (f"{leaks[0]}::whatis; {leaks[9]}::whatis; {run.info['cached']}::whatis; "
            f"{run.info['large']}::whatis; {run.info['small']}::whatis")
    r = run_mdbpy(*_args(heap, where), "-e", cmds)
    assert one_line_stderr(r.stderr) == ""
    assert r.stdout.splitlines() == [
        f"{leaks[0]} is allocated from jemalloc bin 8",
        f"{leaks[9]} is allocated from jemalloc large 57344",
        f"{run.info['cached']} is freed from jemalloc bin 96",
        f"{run.info['large']} is allocated from jemalloc large 16384",
        f"{run.info['small']} is allocated from jemalloc bin 16"]


def test_verify_and_walkers(heap):
    r = run_mdbpy(*_args(heap, "core"), "-e",
                  "::heap_verify; ::walk je_arena ! wc -l; ::walk je_region ! wc -l")
    assert one_line_stderr(r.stderr) == ""
    out = r.stdout.split()
    assert r.stdout.splitlines()[0] == "jemalloc: heap is clean"
    assert out[-2] == "2"
    assert int(out[-1]) > 20000


def test_stripped_jemalloc_says_so(tmp_path):
    """Debian's libjemalloc.so.2 has no internal symbols: ::jemalloc names the version and
    says, in one line, that this is not supported yet; the heap commands warn once."""
    exe = compile_debian("jemalloc_heap", tmp_path)
    run = start_fixture(exe)
    try:
        r = run_mdbpy("-p", run.pid, "-e", "::jemalloc")
        assert r.stdout.splitlines() == [f"jemalloc {VERSION} in libjemalloc.so.2",
                                          "prefix      '' (public), no internal symbols"]
        assert one_line_stderr(r.stderr) == (
            f"mdbpy: jemalloc {VERSION} (libjemalloc.so.2): no symbol table (stripped): "
            "finding jemalloc's structures without symbols is not yet supported")
    finally:
        run.stop()


def test_no_jemalloc(build_dir):
    exe = compile_fixture("basic", build_dir, out_name="basic_for_jemalloc")
    run = start_fixture(exe)
    try:
        r = run_mdbpy("-p", run.pid, "-e", "::load jemalloc; ::jemalloc")
        assert one_line_stderr(r.stderr) == (
            "mdbpy: jemalloc: no jemalloc in this target (no object defines "
            "*mallctlnametomib)")
    finally:
        run.stop()


@pytest.mark.parametrize("where", ["live", "core"])
def test_je_stats_equal_mallctl(heap, where):
    """::je_stats's totals (counted from the walk) equal the fixture's stats.* after an epoch
    refresh, and its per-bin curregs/curslabs equal stats.arenas.<all>.bins.<j>.*."""
    run = heap[0]
    r = run_mdbpy(*_args(heap, where), "-e", "::je_stats -b")
    assert one_line_stderr(r.stderr) == ""
    got = dict(ln.split() for ln in r.stdout.splitlines()[:7])
    for name in ("allocated", "active", "resident", "mapped"):
        assert int(got[name]) == int(run.info[name]), name
    assert int(got["tcache"]) == int(run.info["tcache_bytes"])
    rows = [ln.split() for ln in r.stdout.splitlines()[8:]]
    assert {int(b): (int(regs), int(slabs)) for b, _size, regs, slabs, _held in rows} == {
        b: v for b, v in run.info["bins"].items() if v != (0, 0)}


@pytest.mark.parametrize("where", ["live", "core"])
def test_with_glibc_malloc(tmp_path, where):
    """jemalloc dlopen()ed beside glibc's malloc, each heap holding the only pointers into the
    other: both allocators are found and ::findleaks reports exactly the 2 + 2 planted leaks."""
    import os

    from jemalloc_builds import lib_path, need_ci_build

    need_ci_build()
    exe = compile_fixture("jemalloc_mixed", tmp_path, libs=("-ldl",))
    env = dict(os.environ, GLIBC_TUNABLES="glibc.rtld.optional_static_tls=65536")
    run = start_fixture(exe, lib_path("libjemalloc.so.2"), env=env)
    try:
        args = ("-p", run.pid) if where == "live" else (exe, gcore(run.pid, tmp_path / "core"))
        r = run_mdbpy(*args, "-e", "::findleaks; ::dmods")
    finally:
        run.stop()
    assert one_line_stderr(r.stderr) == ""
    assert _leaked(r.stdout) == {int(a, 16) for a in run.info["leaks"].split(",")}
    assert "Total       4 buffers" in r.stdout
    assert {"jemalloc", "ptmalloc"} <= set(r.stdout.split())
