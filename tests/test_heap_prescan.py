"""findleaks reads a live heap once: the blocks glibc's chunk walk reads are kept for the
scan (mdbpy/heap/prescan.py), and the result is exactly the two-pass scan's.

The glibc_heap fixture in `sized` mode holds 20,000 chunks of 16 to 1024 bytes (200 of them
leaked). The same stopped process is searched with and without the prescan: the same leaks,
warnings and statistics; with it, the bytes read through the target add up to the heap once
plus the roots, where without it the scan reads the candidates' memory a second time."""

from __future__ import annotations

import io

import pytest
from support import SYS_PAUSE, compile_fixture, start_fixture, wait_syscalls

from mdbpy.heap.leaks import find_leaks, statistics
from mdbpy.session import Session
from mdbpy.target.live import LiveTarget

CHUNKS = 20_000


@pytest.fixture(scope="module")
def sized(build_dir):
    exe = compile_fixture("glibc_heap", build_dir, flags=("-g", "-O2", "-Wno-use-after-free"))
    r = start_fixture(exe, "sized", CHUNKS)
    wait_syscalls(r.pid, {r.pid: SYS_PAUSE})  # parked: its stack is the same in every look
    yield r
    r.stop()


def _search(pid: int, one_pass: bool, monkeypatch):
    """(leaks, warnings, statistics less the clocks, bytes read, heap bytes)."""
    monkeypatch.setattr(LiveTarget, "reads_through_kernel", one_pass)
    read = []
    real = LiveTarget.read

    def counting(self, addr, size):
        read.append(size)
        return real(self, addr, size)

    monkeypatch.setattr(LiveTarget, "read", counting)
    s = Session(LiveTarget(pid), out=io.StringIO(), err=io.StringIO())
    try:
        rep = find_leaks(s)
        heap = sum(b - a for a, b in rep.candidates.owners[0].heap_regions())
        st = statistics(rep)
    finally:
        s.close()
    for k in ("peak_kb", "cpu_seconds", "wall_seconds"):
        st.pop(k)
    leaks = sorted((g.rep.addr, g.rep.size, g.count) for g in rep.groups)
    return leaks, rep.warnings, st, sum(read), heap


def test_one_read_of_the_heap_and_the_same_answer(sized, monkeypatch):
    once = _search(sized.pid, True, monkeypatch)
    twice = _search(sized.pid, False, monkeypatch)
    assert once[:3] == twice[:3]
    leaks, heap = once[0], once[4]
    assert sum(count for _a, _s, count in leaks) == CHUNKS // 100
    # roots (data sections, stacks) and the walk's small reads come on top of the heap
    slack = 1 << 20
    assert heap <= once[3] < heap + slack, (once[3], heap)
    # without: the scan reads the candidates' memory again (the heap less its top chunk)
    assert heap * 9 // 10 <= twice[3] - once[3] <= heap, (twice[3], once[3], heap)
