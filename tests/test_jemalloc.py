"""The jemalloc module on real jemalloc 5.3.0 and 5.2.1 heaps, live and as cores, found each way
it can be (symbols and DWARF, shared and static, of 5.3.0 and of 5.2.1; symbols without DWARF,
of 5.3.0 and of 5.2.1 (bullseye's libjemalloc-dev, static);
Debian's stripped libraries of bookworm, 5.3.0, and bullseye, 5.2.1, by heuristics; builds
without stats; extents from sbrk): detection, the planted leaks exactly, the region walk
against jemalloc's own counters, ::whatis, ::heap_verify, and the one-line messages of a
jemalloc whose structures do not verify and of a target without one.

fixtures/jemalloc_heap.c plants 12 leaks (10 from the main thread, 2 from a second one, three
of them large) among ~23,000 kept regions, with regions freed into both threads' tcaches, and
prints jemalloc's stats.allocated and tcache_bytes after an epoch refresh: the oracle for the
walk (bytes of regions out of their slabs, and of those the tcaches hold) is jemalloc's own.
"""

from __future__ import annotations

import pytest
from jemalloc_builds import (BULLSEYE_G, compile_bullseye, compile_debian, compile_dwarf,
                             compile_nodwarf, compile_rjem, compile_symbols52)
from support import compile_fixture, gcore, one_line_stderr, run_mdbpy, start_fixture

VERSION = "5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c"
VERSION_52 = "5.2.1-0-gea6b3e973b477b8061e0076bb257dbd7f3faa756"
# .ci/jemalloc-5.2/g's: redis's bundled 5.2.1, whose VERSION file says so (.ci/build-jemalloc)
VERSION_52_REDIS = "5.2.1-0-g0"
# the offsets the heuristics find in bullseye's 5.2.1: base_t's as its base_structs.h lays
# them out (blocks after ind, extent_hooks, a 112-byte mutex, a bool, pind_last and
# extent_sn_next; the counters after avail[232] of one pointer each); arena_t.tcache_ql past
# arena_stats_t, whose size depends on the configuration. The -g build of 5.2.1 in the same
# configuration (.ci/jemalloc-5.2/g: redis's copy, whose changes touch no struct) has them in
# its DWARF: test_builtin_layouts_match_dwarf.
FOUND_52 = {"arena_t.tcache_ql": 0x27C8, "base_t.blocks": 0x90, "base_t.allocated": 0x7D8,
            "base_t.resident": 0x7E0, "base_t.mapped": 0x7E8}


BUILDS = {"dwarf": lambda d: compile_dwarf("jemalloc_heap", d),
          "static": lambda d: compile_dwarf("jemalloc_heap", d, static=True),
          "nodwarf": lambda d: compile_nodwarf("jemalloc_heap", d),
          "debian": lambda d: compile_debian("jemalloc_heap", d),
          "bullseye": lambda d: compile_bullseye("jemalloc_heap", d),
          "dwarf52": lambda d: compile_dwarf("jemalloc_heap", d, build=BULLSEYE_G),
          "static52": lambda d: compile_dwarf("jemalloc_heap", d, static=True,
                                              build=BULLSEYE_G),
          "symbols52": lambda d: compile_symbols52("jemalloc_heap", d),
          "rjem": lambda d: compile_rjem("jemalloc_heap", d),
          "rjemstripped": lambda d: compile_rjem("jemalloc_heap", d, strip="all")}
# the builds linking jemalloc statically under the _rjem_ prefix (tikv-jemallocator's): glibc's
# malloc stays in the process beside it
RJEM = ("rjem", "rjemstripped")
# the builds of jemalloc 5.2.1 (bullseye's stripped library, its static one with symbols, and
# its source built with -g)
R52 = ("bullseye", "dwarf52", "static52", "symbols52")


@pytest.fixture(scope="module", params=list(BUILDS))
def heap(request, tmp_path_factory):
    """The fixture linked with each build (the -g one shared, static, static without DWARF;
    Debian's stripped library; bullseye's stripped 5.2.1, its static library with symbols and
    its -g build, shared and static; tikv-jemalloc-sys's configuration under the _rjem_ prefix,
    static, with its symbols and stripped of all of them), running, and a core of it:
    (running, exe, core)."""
    d = tmp_path_factory.mktemp("jemalloc")
    exe = BUILDS[request.param](d)
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


METHODS = {"dwarf": "symbols and DWARF", "static": "symbols and DWARF",
           "nodwarf": "symbols; arena_t and base_t offsets by verified heuristics (no DWARF)",
           "debian": "heuristics, each verified (no internal symbols)",
           "bullseye": "heuristics, each verified (no internal symbols)",
           "dwarf52": "symbols and DWARF", "static52": "symbols and DWARF",
           "symbols52": "symbols; arena_t and base_t offsets by verified heuristics (no DWARF)",
           "rjem": "symbols and DWARF",
           "rjemstripped": "heuristics, each verified (no internal symbols)"}
OBJECT = {"rjem": "a.out (defines _rjem_mallctlnametomib)",
          "rjemstripped": "a.out (no symbols; embeds jemalloc's version string and "
                          "/etc/_rjem_malloc.conf)"}


def _dwarf_offsets() -> dict[str, int]:
    """The offsets the heuristics find, as the -g build's DWARF gives them (Debian's build is
    the same release and configuration)."""
    from jemalloc_builds import lib_path, need_ci_build

    from mdbpy.layout.dwarf import find_structs

    need_ci_build()
    dw = find_structs(lib_path("libjemalloc.so.2"), ("arena_s", "base_s"), cu_hint="arena.c")
    return {"arena_t.tcache_ql": dw["arena_s"].members["tcache_ql"][0],
            **{f"base_t.{n}": dw["base_s"].members[n][0]
               for n in ("blocks", "allocated", "resident", "mapped")}}


def _build(heap) -> str:
    return heap[1].name.rsplit("_", 1)[1]


def _version(build: str) -> str:
    """The version string a build embeds: 5.3.0's, bullseye's 5.2.1 release, or redis's copy
    of it (the -g 5.2 builds)."""
    if build in ("dwarf52", "static52"):
        return VERSION_52_REDIS
    return VERSION_52 if build in R52 else VERSION


@pytest.mark.parametrize("where", ["live", "core"])
def test_jemalloc_dcmd(heap, where):
    """::jemalloc names the way each build was read and what was found where; the offsets
    the heuristics find are DWARF's (the same release and configuration)."""
    r = run_mdbpy(*_args(heap, where), "-e", "::jemalloc")
    assert one_line_stderr(r.stderr) == ""
    lines = r.stdout.splitlines()
    build = _build(heap)
    stripped = build in ("debian", "bullseye", "rjemstripped")
    obj = "libjemalloc.so.2" if build in ("dwarf", "debian", "bullseye", "dwarf52") else "a.out"
    prefix = "_rjem_" if build in RJEM else ""
    assert lines[0] == f"jemalloc {_version(build)} in {obj}"
    assert lines[1] == (f"prefix      '{prefix}' (public), "
                        + ("no internal symbols" if stripped else f"'{prefix}je_' (internal)"))
    assert lines[2] == f"method      {METHODS[build]}"
    assert f"object      {OBJECT.get(build, f'{obj} (defines mallctlnametomib)')}" in lines
    assert "arenas      2" in lines
    assert "tcaches     2" in lines
    if build in ("nodwarf", "debian", "bullseye", "symbols52", "rjemstripped"):
        found = FOUND_52 if build in R52 else _dwarf_offsets()
        assert (f"layouts     builtin {'5.2' if build in R52 else '5.3'} (edata_t, "
                "tcache_t, cache_bin_t, bin_info_t); found: "
                + ", ".join(f"{k} +0x{v:x}" for k, v in found.items())) in lines
    if stripped:
        keys = [ln.split()[0] for ln in lines[3:9]]
        assert keys == ["object", "emap", "sizes", "bins", "arenas[]", "layouts"]
        # as many leaves as the walk reads (two where the heap straddles a 1 GiB boundary)
        leaves = int(next(ln for ln in lines if ln.startswith("extents ")).split()[3])
        assert lines[4].endswith(f": {leaves} {'leaf' if leaves == 1 else 'leaves'} whose "
                                 "elements' edata_t hold their pages")
        assert lines[5].endswith(": 232 size classes")
        assert lines[6].endswith(": 36 small classes")
    else:  # the rtree by its symbol: 5.2's is extents_rtree
        rtree = "extents_rtree" if build in R52 else "arena_emap_global"
        assert next(ln for ln in lines if ln.startswith("emap ")).startswith(
            f"emap        {prefix}je_{rtree} 0x")


def _tcache_bytes(heap, size, szind, held, nbins: int) -> int:
    """The bytes of held regions that jemalloc's stats.arenas.<all>.tcache_bytes counts: all
    of them, but in 5.2.1 the small classes' only (its arena_stats_merge() indexes bins_large
    from SC_NBINS, past the large bins in use, which count nothing)."""
    import numpy as np

    if _build(heap) in R52:
        held = held & (np.asarray(szind) < nbins)
    return int(np.asarray(size)[held].sum())


@pytest.mark.parametrize("where", ["live", "core"])
def test_regions_equal_jemalloc_stats(heap, where):
    """Bytes of regions out of their slabs (and large extents in use) == stats.allocated;
    bytes of the regions the tcaches hold (FREE for the program) == tcache_bytes; the size
    classes read (by symbol) or found (by heuristics) are those layouts.py derives."""
    import numpy as np

    import mdbpy
    from mdbpy.heap.model import ALLOC, FREE
    from mdbpy_commands.jemalloc.allocator import JemallocAllocator
    from mdbpy_commands.jemalloc.extents import extents
    from mdbpy_commands.jemalloc.layouts import size_classes
    from mdbpy_commands.jemalloc.regions import regions
    from mdbpy_commands.jemalloc.tcache import cached

    run, exe, core = heap
    d = mdbpy.attach(run.pid) if where == "live" else mdbpy.open_core(str(core), str(exe))
    try:
        s = d.session
        found = [a for a in s.allocators() if isinstance(a, JemallocAllocator)]
        assert [a.name for a in s.allocators()] == (
            ["jemalloc", "ptmalloc"] if _build(heap) in RJEM else ["jemalloc"])
        a = found[0]
        assert a.state.index2size == size_classes()
        r = regions(a.state, extents(s, a.state))
        held = np.isin(r.base, cached(s, a.state).ptr)
        assert int(r.size[r.out].sum()) == int(run.info["allocated"])
        assert _tcache_bytes(heap, r.size, r.szind, held, a.state.nbins) == int(
            run.info["tcache_bytes"])
        t = a.buffers()
        assert int((t.state == FREE).sum()) == int((~r.out).sum()) + int(held.sum())
        assert int(t.size[t.state == ALLOC].sum()) == (int(run.info["allocated"])
                                                        - int(r.size[held].sum()))
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


@pytest.mark.parametrize("heap", ["debian"], indirect=True)
def test_heuristics_refuse_a_smashed_root(heap, tmp_path):
    """Debian's build as a core whose rtree root entries are zeroed: no candidate verifies,
    and ::jemalloc says so in one line (the heap commands warn once), never a wrong heap."""
    import shutil

    import numpy as np
    from test_jemalloc_detect import _file_offset

    import mdbpy
    from mdbpy_commands.jemalloc.state import locate

    _run, exe, core = heap
    d = mdbpy.open_core(str(core), str(exe))
    try:
        root = locate(d.session).root
        words = np.frombuffer(d.read(root, 8 << 18), "<u8")
        slots = [root + 8 * int(k) for k in np.flatnonzero(words)]
    finally:
        d.close()
    bad = tmp_path / "bad.core"
    shutil.copy(core, bad)
    with open(bad, "r+b") as f:
        for a in slots:
            f.seek(_file_offset(bad, a))
            f.write(bytes(8))
    r = run_mdbpy(exe, bad, "-e", "::jemalloc")
    assert r.stdout.splitlines() == [f"jemalloc {VERSION} in libjemalloc.so.2",
                                      "prefix      '' (public), no internal symbols"]
    assert one_line_stderr(r.stderr) == (
        "mdbpy: jemalloc: libjemalloc.so.2: no emap rtree root found in its data (no word "
        "points at a 2 MiB leaf whose edata_t hold its pages)")


def test_no_jemalloc(build_dir):
    exe = compile_fixture("basic", build_dir, out_name="basic_for_jemalloc")
    run = start_fixture(exe)
    try:
        r = run_mdbpy("-p", run.pid, "-e", "::load jemalloc; ::jemalloc")
        assert one_line_stderr(r.stderr) == (
            "mdbpy: jemalloc: no jemalloc in this target (no object defines "
            "*mallctlnametomib, the executable embeds no jemalloc conf path and version "
            "string)")
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
    rows = [ln.split() for ln in r.stdout.splitlines()[8:]]
    small = sum(int(size) * int(held) for _b, size, _regs, _slabs, held in rows)
    # 5.2.1's tcache_bytes counts the small classes only (see _tcache_bytes)
    assert int(run.info["tcache_bytes"]) == (small if _build(heap) in R52
                                             else int(got["tcache"]))
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


@pytest.mark.parametrize("heap", ["dwarf", "dwarf52", "symbols52"], indirect=True)
def test_heuristics_find_what_the_symbols_name(heap):
    """The heuristics, run on the core of a -g build (5.3.0's, 5.2.1's) or of bullseye's static
    5.2.1 with its symbols, find each global where its symbol is, the bases each arena_t's
    `base` field holds, and the offsets the symbol path has (DWARF's; without DWARF, those
    test_jemalloc_dcmd checks are FOUND_52)."""
    import mdbpy
    from mdbpy.layout.bind import Binder
    from mdbpy_commands.jemalloc import heuristic
    from mdbpy_commands.jemalloc.state import locate

    _run, exe, core = heap
    d = mdbpy.open_core(str(core), str(exe))
    try:
        st = locate(d.session)
        h = heuristic.locate(d.session, st.found.obj, st.facts,
                             Binder(st.facts.layouts, version=st.found.version))
        sym = {n: st.found.obj.lookup("je_" + n).addr
               for n in ("sz_index2size_tab", "bin_infos", "arenas")}
    finally:
        d.close()
    assert (h.root, h.index2size, h.bins, h.arenas, h.bases) == (
        st.root, st.index2size, st.bins, st.arenas, st.bases)
    assert (h.index2size_at, h.bins_at, h.arenas_at) == (
        sym["sz_index2size_tab"], sym["bin_infos"], sym["arenas"])
    assert h.offsets == st.offsets


@pytest.mark.parametrize("strip", ["", "debug", "all"], ids=["dwarf", "nodwarf", "stripped"])
@pytest.mark.parametrize("where", ["live", "core"])
def test_without_stats(tmp_path, where, strip):
    """jemalloc built as tikv-jemalloc-sys builds it by default (`--disable-stats`, _rjem_,
    static): with symbols and DWARF, with symbols only, stripped of everything. No tcache is
    linked into its arena's ring, so the tcaches come from tsd_nominal_tsds (DWARF) or each
    thread's TLS block (without DWARF, where the bases verify without their counters, which
    stay 0); the planted leaks are exact (the regions the tcaches hold are free, their stale
    stack slots no roots), and ::je_stats says in one line that the build keeps no
    statistics."""
    exe = compile_rjem("jemalloc_heap", tmp_path, stats=False, strip=strip)
    run = start_fixture(exe)
    try:
        args = ("-p", run.pid) if where == "live" else (exe, gcore(run.pid, tmp_path / "core"))
        r = run_mdbpy(*args, "-e", f"::jemalloc; ::findleaks; {run.info['cached']}::whatis; "
                                   "::heap_verify; ::je_stats")
    finally:
        run.stop()
    assert one_line_stderr(r.stderr) == ""
    lines = r.stdout.splitlines()
    threads = (next(ln for ln in lines if ln.startswith("threads     tsd_nominal_tsds 0x")
                    and ln.endswith(": each thread's tsd_t (its tcache inside, per DWARF)"))
               if not strip else
               "threads     each thread's TLS block: the tcache in it bound to an arena (no "
               "stats: the arenas' rings are empty)")
    assert [ln for ln in lines if ln.startswith(("method", "tcaches", "threads"))] == [
        "method      " + {"": "symbols and DWARF", "debug": METHODS["nodwarf"],
                          "all": METHODS["rjemstripped"]}[strip],
        threads, "tcaches     2"]
    if strip:
        assert ("layouts     builtin 5.3 (edata_t, tcache_t, cache_bin_t, bin_info_t); found: "
                + ", ".join(f"{k} +0x{v:x}" for k, v in _dwarf_offsets().items()
                            if k != "arena_t.tcache_ql")) in lines
    assert _leaked(r.stdout) == {int(a, 16) for a in run.info["leaks"].split(",")}
    assert "Total      12 buffers" in r.stdout
    assert f"{run.info['cached']} is freed from jemalloc bin 96" in lines
    assert "jemalloc: heap is clean" in lines
    assert lines[-1] == ("jemalloc keeps no statistics in this build (configured without "
                         "stats: its bases' counters are all 0); ::heap_stats counts the "
                         "regions")


DSS_BUILDS = ("dwarf", "debian", "bullseye", "dwarf52", "symbols52")


@pytest.mark.parametrize("where", ["live", "core"])
@pytest.mark.parametrize("build", DSS_BUILDS)
def test_dss(tmp_path, build, where):
    """`dss:primary`: jemalloc takes its extents from sbrk (extent_dss.c) before mmap, so the
    heap is in the [heap] mapping, while its bases (metadata: edata_t, rtree leaves, arenas)
    stay mmapped (base.c maps them with extent_alloc_mmap). The extents are found the same
    way, through the emap: the planted leaks are exact (each inside [heap]), ::je_stats'
    totals equal the fixture's stats.*, the heap is clean; by symbols and DWARF, by symbols
    without it (5.2) and by the heuristics, 5.3 and 5.2."""
    import os

    from support import proc_maps

    exe = BUILDS[build](tmp_path)
    run = start_fixture(exe, env=dict(os.environ, MALLOC_CONF="dss:primary"))
    try:
        brk = [(a, b) for a, b, _p, _o, path in proc_maps(run.pid) if path == "[heap]"]
        args = ("-p", run.pid) if where == "live" else (exe, gcore(run.pid, tmp_path / "core"))
        r = run_mdbpy(*args, "-e", "::findleaks; ::je_stats; ::heap_verify")
    finally:
        run.stop()
    assert one_line_stderr(r.stderr) == ""
    planted = {int(a, 16) for a in run.info["leaks"].split(",")}
    assert len(brk) == 1 and all(brk[0][0] <= p < brk[0][1] for p in planted)
    assert _leaked(r.stdout) == planted
    got = dict(ln.split() for ln in r.stdout.splitlines() if len(ln.split()) == 2
               and ln.split()[1].isdigit())
    for name in ("allocated", "active", "resident", "mapped"):
        assert int(got[name]) == int(run.info[name]), name
    assert r.stdout.splitlines()[-1] == "jemalloc: heap is clean"
