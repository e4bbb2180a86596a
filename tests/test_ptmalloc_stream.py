"""The chunk walk of glibc heaps in windows (issue 8: multi-GiB heaps in bounded memory).

The walk reads a heap WINDOW bytes at a time. On gcore cores of the real glibc fixtures (every
kind of free list and a thread arena; each damage of ptmalloc_damage) a walk in small windows
gives exactly what a walk of the whole heap in one window gives: addresses, sizes, flags, next
PREV_INUSE bits, problems and bad chunks, and the same listings and verify reports. The window
sizes are chosen to put the boundary at the smashed header, just after it and at the resync
point, and to make chunks straddle windows. A C fixture with a 1.5 GiB brk heap (one page of
each chunk touched) is walked and leak-checked by the CLI in less than 600 MiB, exactly. The
progress hook sees every window, and Ctrl-C during a walk stops it cleanly.
"""

from __future__ import annotations

import io

import pytest
from support import compile_fixture, gcore, start_fixture

from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.target.core import open_file_target
from mdbpy_commands.ptmalloc import chunks
from mdbpy_commands.ptmalloc.table import chunk_table
from mdbpy_commands.ptmalloc.locate import locate

FLAGS = ("-g", "-O0", "-Wno-use-after-free")
WHOLE = 1 << 40  # one window holds any heap: the walk as a single block
DAMAGE = ("size", "fastcycle", "tcachecycle", "bincycle", "wildfd", "top", "topptr",
          "arenanext")
LISTINGS = ("::malloc_chunks", "::ptmalloc_verify", "::heap_stats", "::walk ptmalloc_free")


def _core(exe, build_dir, mode, tag):
    """(Running's facts, core path) of one fixture run, the process killed after the gcore."""
    r = start_fixture(exe, mode)
    try:
        return r.info, gcore(r.pid, build_dir / f"stream-{tag}-{mode}")
    finally:
        r.stop()


@pytest.fixture(scope="module")
def cores(build_dir):
    """{name: (facts, core, exe)}: glibc_heap's leaks and corrupt runs, every damage."""
    out = {}
    heap_exe = compile_fixture("glibc_heap", build_dir, flags=FLAGS)
    for mode in ("leaks", "corrupt"):
        out[mode] = (*_core(heap_exe, build_dir, mode, "heap"), heap_exe)
    damage_exe = compile_fixture("ptmalloc_damage", build_dir, flags=FLAGS)
    for mode in DAMAGE:
        out[mode] = (*_core(damage_exe, build_dir, mode, "damage"), damage_exe)
    return out


def _session(core, exe) -> Session:
    s = Session(open_file_target(str(core), exe=str(exe)), out=io.StringIO(), err=io.StringIO())
    Engine(s)
    return s


def _walks(s, window: int, monkeypatch) -> list:
    """Every heap's HeapWalk with the given window, as plain comparable values."""
    monkeypatch.setattr(chunks, "WINDOW", window)
    out = []
    for a in locate(s).arenas:
        for h in a.heaps:
            w = chunks.walk_heap(s.mem, h.first, h.end, h.top)
            out.append((h.first, w.addr.tolist(), w.size.tolist(), w.flags.tolist(),
                        w.next_prev_inuse.tolist(), w.problems, w.bad.tolist()))
    return out


def _windows(facts: dict, first: int) -> list[int]:
    """Small windows, and for the smashed-size damage the ones whose boundary falls on the
    smashed header, just after it, and on the resync point."""
    out = [32, 48, 4096, 64 << 10]
    if "smashed" in facts:  # the walk resumes at the chunk after the smashed one
        smashed = int(facts["smashed"], 16)
        resume = int(facts.get("resume", facts.get("after_smashed", "0")), 16)
        out += [smashed - first, smashed - first + 16, resume - first, resume - smashed]
    return out


@pytest.mark.parametrize("name", ("leaks", "corrupt") + DAMAGE)
def test_windowed_walk_equals_whole_walk(cores, name, monkeypatch):
    facts, core, exe = cores[name]
    s = _session(core, exe)
    try:
        whole = _walks(s, WHOLE, monkeypatch)
        assert whole and all(w[1] for w in whole)
        first = locate(s).arenas[0].heaps[0].first
        for window in _windows(facts, first):
            assert _walks(s, window, monkeypatch) == whole, window
        if name == "size":
            problem = whole[0][5]
            assert [p[:2] for p in problem] == [(int(facts["smashed"], 16),
                                                 int(facts["resume"], 16))]
    finally:
        s.close()


def test_chunks_straddle_windows(cores, monkeypatch):
    """With a 4 KiB window the leaks heap has chunks longer than a window: the walk steps over
    them (the next window starts at the header they lead to) and still finds every chunk."""
    facts, core, exe = cores["leaks"]
    s = _session(core, exe)
    try:
        whole = _walks(s, WHOLE, monkeypatch)
        sizes = [size for w in whole for size in w[2]]
        assert max(sizes) > 4096
        assert _walks(s, 4096, monkeypatch) == whole
    finally:
        s.close()


@pytest.mark.parametrize("name", ("leaks", "size", "topptr"))
def test_listings_equal_in_small_windows(cores, name, monkeypatch):
    """The dcmds built on the chunk table print the same with 64 KiB and 48-byte windows."""
    facts, core, exe = cores[name]
    shown = []
    for window in (WHOLE, 64 << 10, 48):
        monkeypatch.setattr(chunks, "WINDOW", window)
        s = _session(core, exe)
        try:
            got = []
            for cmd in LISTINGS:
                s.out.seek(0)
                s.out.truncate()
                s.engine.run_string(cmd)
                got.append(s.out.getvalue())
            shown.append((got, s.err.getvalue()))
        finally:
            s.close()
    assert shown[0][0][0].count("\n") > 10
    assert shown[1] == shown[0] and shown[2] == shown[0]


def test_progress_sees_every_window(cores, monkeypatch):
    """chunk_table's progress callback gets (bytes walked, bytes of all heaps) at every window
    of every heap, never going back, and ends at the total."""
    facts, core, exe = cores["leaks"]
    monkeypatch.setattr(chunks, "WINDOW", 4096)
    s = _session(core, exe)
    try:
        calls = []
        t = chunk_table(s, lambda done, total: calls.append((done, total)))
        heaps = [h for a in locate(s).arenas for h in a.heaps]
        total = sum(h.end - h.first for h in heaps)
        assert len(heaps) == 2 and len(calls) > 2 * len(heaps)
        assert {c[1] for c in calls} == {total}
        assert [c[0] for c in calls] == sorted(c[0] for c in calls)
        assert calls[0] == (0, total) and calls[-1] == (total, total)
        walked = [addr for w in _walks(s, WHOLE, monkeypatch) for addr in w[1]]
        assert set(walked) <= set(t.addr.tolist()) and len(walked) > 30
    finally:
        s.close()


@pytest.mark.parametrize("cmd,message", (
    ("::malloc_chunks", None),
    ("::findleaks", "findleaks: interrupted; no results kept"),
    ("::heap_verify", "heap_verify: interrupted")))
def test_ctrl_c_during_the_walk_stops_it(cores, cmd, message, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, raised here from the progress hook, where the bar's cancel
    raises it) stops the walk: a command that handles it aborts with its own line, any other
    leaves the engine with it (the REPL says 'interrupted'); nothing is cached, and the next
    command walks again."""
    from mdbpy.heap.report import Progress

    facts, core, exe = cores["leaks"]
    s = _session(core, exe)
    try:
        def interrupt(self, done, total):
            raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(Progress, "__call__", interrupt)
            if message is None:
                with pytest.raises(KeyboardInterrupt):
                    s.engine.run_string(cmd)
            else:
                s.engine.run_string(cmd)
        assert s.err.getvalue() == (f"mdbpy: {message}\n" if message else "")
        assert s.out.getvalue() == ""
        assert "ptmalloc.chunks" not in s.cache
        s.engine.run_string("::malloc_chunks")
        assert s.out.getvalue().count("\n") == len(chunk_table(s).addr) + 1 > 30
    finally:
        s.close()


# -- a 1.5 GiB heap ---------------------------------------------------------------------------
MIB = 1 << 20
RSS_LIMIT = 600 * MIB  # the whole-heap walk alone needed over twice the heap's 1.5 GiB


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def big(build_dir):
    """The ptmalloc_big fixture running: a 1.5 GiB brk heap with one page per chunk touched."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft < 2 << 30:
        pytest.skip("RLIMIT_DATA below 2 GiB: no room for a 1.5 GiB heap")
    if _available() < 1 << 30:
        pytest.skip("less than 1 GiB of memory available")
    r = start_fixture(compile_fixture("ptmalloc_big", build_dir))
    try:
        yield r
    finally:
        r.stop()


def _run_measured(*args) -> tuple[str, str, int]:
    """(stdout, stderr, peak RSS in bytes) of one mdbpy run that must succeed."""
    from support import run_measured

    out, err, status, peak = run_measured(*args)
    assert status == 0, status
    return out, err, peak * 1024


def test_big_heap_walked_and_leak_checked_in_bounded_memory(big):
    """The chunk walker and ::findleaks on the live 1.5 GiB heap: every chunk (the first at
    the heap's start, the last before the top), exactly the planted leaks (not the chunk
    referenced only from the middle of a 1 MiB chunk), and mdbpy's peak RSS under 600 MiB."""
    out, err, rss = _run_measured("-p", big.pid, "-e", "::walk ptmalloc_chunk; ::findleaks; "
                                  "::walk leak")
    assert err == ""
    walked, _, rest = out.partition("CACHE ")
    addrs = [int(x, 16) for x in walked.split()]
    assert len(addrs) == int(big.info["chunks"], 16) + 1  # and the top
    assert addrs == sorted(addrs)
    assert (addrs[0], addrs[-1]) == (big.addr("first"), big.addr("top"))
    leaks = [int(x, 16) for x in rest.split("\n") if x.startswith("0x")]
    assert sorted(leaks) == sorted(big.addr(k) - 16 for k in ("leak_big1", "leak_big2",
                                                              "leak_small"))
    assert big.addr("reached") - 16 in addrs
    assert rss < RSS_LIMIT, f"peak RSS {rss / MIB:.0f} MiB"
    big.assert_untouched()


def test_ctrl_c_stops_the_walk_of_the_big_heap(big):
    """SIGINT while the walk reads the heap (sent once mdbpy has read 256 MiB of it) stops it
    as any command without its own handling is stopped: mdbpy reading a pipe says it was
    interrupted and ends; the target is left running, untraced."""
    import signal

    from support import PipedSession

    s = PipedSession("-p", big.pid)
    try:
        s.attached()
        s.send("::walk ptmalloc_chunk\n")
        s.wait_read(256 * MIB)
        s.proc.send_signal(signal.SIGINT)
        assert s.finish() == (130, "mdbpy: interrupted")
    finally:
        s.kill()
    big.assert_untouched()
