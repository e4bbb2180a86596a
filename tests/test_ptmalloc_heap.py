"""glibc malloc on a real heap: the glibc_heap fixture, live and as a gcore core, located from
libc's debug symbols and by the heuristics alone. Every expectation is what the fixture prints
of itself: planted addresses, mallinfo2(3) and malloc_stats(3)."""

from __future__ import annotations

import os

import pytest
from support import compile_fixture, engine_session, gcore, run_in, run_mdbpy, start_fixture

from mdbpy.heap.leaks import find_leaks
from mdbpy.session import Session
from mdbpy_commands.ptmalloc.version import release_of_file

FLAGS = ("-g", "-O0", "-Wno-use-after-free")
KINDS = ("live", "core")
MODES = ("auto", "heuristic")
MALLINFO = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")


@pytest.fixture(scope="module")
def gh_exe(build_dir):
    return compile_fixture("glibc_heap", build_dir, flags=FLAGS)


def _planted(exe, build_dir, mode, tunables=None):
    """Yield (Running, malloc_stats text, gcore path, exe) of a fixture run; kill it after."""
    env = dict(os.environ)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    r = start_fixture(exe, mode, env=env)
    try:
        stats = ""
        if mode != "fastdup":
            # printed right after READY, so these reads never wait (and READY's read may
            # have buffered them already, which a select() on the pipe would not see)
            for _ in range(64):
                stats += r.proc.stdout.readline()
                if "max mmap bytes" in stats:
                    break
        yield r, stats, gcore(r.pid, build_dir / f"glibc-{mode}"), exe
    finally:
        r.stop()


@pytest.fixture(scope="module")
def leaks(gh_exe, build_dir):
    yield from _planted(gh_exe, build_dir, "leaks")


@pytest.fixture(scope="module")
def corrupt(gh_exe, build_dir):
    yield from _planted(gh_exe, build_dir, "corrupt", "glibc.malloc.perturb=90")


@pytest.fixture(scope="module")
def fastdup(gh_exe, build_dir):
    yield from _planted(gh_exe, build_dir, "fastdup", "glibc.malloc.tcache_count=0")


def opened(planted, kind: str, mode: str = "auto"):
    r, _stats, core, exe = planted
    return engine_session(r.pid if kind == "live" else None, core, exe,
                          **{"ptmalloc.locate": mode})


run = run_in


def where(s: Session, chunk: int) -> str:
    line = run(s, f"0x{chunk:x}::malloc_chunk").splitlines()[1]
    return line.split()[-1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_structures_found_and_shown(leaks, kind, mode):
    with opened(leaks, kind, mode) as s:
        out = run(s, "::ptmalloc")
        how = "symbols" if mode == "auto" else "heuristic"
        major, minor = release_of_file("/lib/x86_64-linux-gnu/libc.so.6")
        assert out.splitlines()[0] == (f"glibc {major}.{minor} (libc.so.6), locate mode "
                                       f"{mode}, safe-linking on")
        assert f"({how})" in out.splitlines()[1] and f"({how})" in out.splitlines()[2]
        assert "arenas      2" in out and "tcaches     2" in out
        arenas = run(s, "::walk ptmalloc_arena").split()
        assert len(arenas) == 2
        heaps = run(s, "::heaps").splitlines()[1:]
        assert [int(h.split()[0], 16) for h in heaps] == [int(a, 16) for a in arenas]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_free_chunks_are_in_their_lists(leaks, kind, mode):
    r = leaks[0]
    with opened(leaks, kind, mode) as s:
        assert where(s, r.addr("fast_chunk")) == "fastbin[3]"
        assert where(s, r.addr("tcache_chunk")) == "tcache[3]"
        assert where(s, r.addr("small_chunk")) == "smallbin[62]"
        assert where(s, r.addr("large_chunk")) == "largebin[99]"
        assert where(s, r.addr("unsorted_chunk")) == "unsorted"
        assert where(s, r.addr("thread_tcache_chunk")) == "tcache[3]"
        free = [int(a, 16) for a in run(s, "::walk ptmalloc_free").split()]
        assert len(free) == 13  # 7 + 1 tcache, 2 fastbin, small, large, unsorted
        assert {r.addr(k) for k in ("fast_chunk", "tcache_chunk", "small_chunk",
                                    "large_chunk", "unsorted_chunk",
                                    "thread_tcache_chunk")} <= set(free)
        fast = run(s, "::fastbins")
        assert f"fastbin[3] [2]: 0x{r.addr('fast_chunk'):x} -> " in fast
        tc = run(s, "::tcachebins")
        assert f"tcache[3] count=7 [7]: 0x{r.addr('tcache_chunk'):x} -> " in tc
        mm = run(s, "::malloc_chunks -u")
        for k in ("live_mmapped", "leak_mmapped"):
            assert f"{r.addr(k):016x}" in mm
        piped = run(s, "::malloc_chunks -f | ::malloc_chunk").splitlines()
        assert len(piped) == 14 and piped[0].split()[0] == "ADDR"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_statistics_equal_glibcs_own(leaks, kind, mode):
    r, stats = leaks[0], leaks[1]
    with opened(leaks, kind, mode) as s:
        assert run(s, "::malloc_stats") == stats
        got = dict(line.split(" = ") for line in run(s, "::mallinfo").splitlines())
        assert {k.strip(): int(v) for k, v in got.items()} == {k: int(r.info[k])
                                                              for k in MALLINFO}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_leaks_are_exactly_the_planted_ones(leaks, kind, mode):
    r = leaks[0]
    with opened(leaks, kind, mode) as s:
        (alloc,) = s.allocators()
        report = find_leaks(s, [alloc])
        got = {leak.addr for leak in report.leaks}
        want = {r.addr("leak_string"), r.addr("leak_cycle_a"), r.addr("leak_cycle_b"),
                r.addr("leak_widget"), r.addr("thread_leak"), r.addr("leak_mmapped") + 16}
        # make_list allocates from the tail: the head is the highest of the three
        want |= {r.addr("leak_list") - 0x30 * k for k in range(3)}
        assert got == want
        groups = {g.group: g.count for g in report.groups}
        assert groups == {"chunk 0x30": 5, "chunk 0x40 Widget": 1,
                          'chunk 0x70 "leaked by leak_helper"': 1, "chunk 0xd0": 1,
                          'chunk 0x301000 "mmapped leak"': 1}
        heads = {leak.addr for leak in report.leaks if leak.unreferenced}
        assert r.addr("leak_list") in heads and r.addr("leak_list") - 0x30 not in heads
        assert run(s, "::ptmalloc_verify") == "ptmalloc: heap clean\n"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_verify_reports_the_planted_corruptions(corrupt, kind, mode):
    r = corrupt[0]
    with opened(corrupt, kind, mode) as s:
        out = run(s, "::ptmalloc_verify").splitlines()
        assert out == [
            f"chunk 0x{r.addr('uaf_tcache'):x} in tcache[1]: tcache key overwritten (use "
            f"after free?), first bad byte at 0x{r.addr('uaf_tcache_at'):x}",
            f"chunk 0x{r.addr('uaf_fast'):x} in fastbin[1] (free) seems corrupted, at "
            f"0x{r.addr('uaf_fast_at'):x}",
            f"chunk 0x{r.addr('smashed'):x}: bad size 0x4141414141414141 (smashed header?); "
            f"walk resumes at 0x{r.addr('after_smashed'):x}",
        ]
        chunks = run(s, "::malloc_chunks").splitlines()
        assert any(line.startswith(f"{r.addr('after_smashed'):016x}") for line in chunks)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_fastbin_double_free_is_found_without_looping(fastdup, kind, mode):
    r = fastdup[0]
    a, b = r.addr("dup_a"), r.addr("dup_b")
    with opened(fastdup, kind, mode) as s:
        main = int(run(s, "::walk ptmalloc_arena").split()[0], 16)
        assert run(s, "::ptmalloc_verify").splitlines() == [
            f"0x{a:x}: arena 0x{main:x} fastbin[1]: cycle at 0x{a:x} (double free?)"]
        assert s.err.getvalue() == (f"mdbpy: ptmalloc: arena 0x{main:x} fastbin[1]: cycle at "
                                    f"0x{a:x} (double free?)\n")
        assert run(s, "::fastbins").splitlines()[1] == f"fastbin[1] [2]: 0x{a:x} -> 0x{b:x}"


def test_without_debug_files_auto_falls_back_to_heuristics(leaks, tmp_path, monkeypatch):
    r, stats = leaks[0], leaks[1]
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", "")
    monkeypatch.setenv("MDBPY_CACHE_DIR", str(tmp_path))
    with opened(leaks, "core") as s:
        out = run(s, "::ptmalloc")
        assert "main_arena" in out and "(heuristic)" in out and "(symbols)" not in out
        assert run(s, "::malloc_stats") == stats
    with opened(leaks, "core", "symbols") as s:
        run(s, "::ptmalloc")
        assert "main_arena has no symbol" in s.err.getvalue()
    p = run_mdbpy("-p", r.pid, "-e", "::ptmalloc; ::malloc_stats",
                  env={"MDBPY_SYSTEM_DEBUG_DIRS": "", "MDBPY_CACHE_DIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert "(heuristic)" in p.stdout and p.stdout.endswith(stats)


@pytest.mark.parametrize("kind", KINDS)
def test_generic_heap_dcmds_see_glibc(corrupt, kind):
    r = corrupt[0]
    with opened(corrupt, kind) as s:
        out = run(s, "::heap_verify -q")
        assert out.splitlines()[-1] == "ptmalloc: 3 problems in 3 buffers"
        assert f"INFO: Object 0x{r.addr('smashed'):x}" in out
        live = r.addr("live_list")
        assert run(s, f"0x{live + 8:x}::whatis") == (f"{live + 8:x} is {live:x}+8, allocated "
                                                     "from chunk 0x30\n")
        assert "struct malloc_state" in run(s, "::layout malloc_state")


@pytest.mark.parametrize("mode", ["auto", "symbols", "heuristic"])
def test_libc_dwarf_is_bound_at_run_time(leaks, mode):
    """With libc's debug file the structs are bound from its DWARF (through the types index)
    and agree with the builtin descriptors for this glibc, field by field; heuristic mode,
    which stands for a machine without debug files, keeps the builtin layouts."""
    from mdbpy_commands.ptmalloc.finders import bind_structs

    r = leaks[0]
    with engine_session(r.pid, **{"ptmalloc.locate": mode}) as s:
        rows = [line.split(None, 3) for line in run_in(s, "::layout").splitlines()[1:]]
        origin = (bind_structs(release_of_file("/lib/x86_64-linux-gnu/libc.so.6"))[
            "malloc_state"].origin if mode == "heuristic" else "DWARF libc.so.6 debug info")
        assert [(m, name, o) for m, name, _size, o in rows] == [
            ("ptmalloc", n, origin) for n in ("malloc_chunk", "malloc_state", "_heap_info",
                                              "malloc_par", "tcache_perthread_struct",
                                              "tcache_entry")]
        assert "differs" not in run_in(s, "::layout malloc_state")
