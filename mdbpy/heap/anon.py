"""Anonymous memory as the allocators and the one heap see it: which mappings no file backs
(the kernel's pseudo-mappings aside), and the runs of adjacent private ones an allocator's
mmapped blocks lie in, however mprotect split a mapping or the kernel merged neighbours.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from mdbpy.heap.roots import merge_ranges

PAGE = 4096
# kernel-made pseudo-mappings that are not anonymous memory of the program
KERNEL_PSEUDO = ("[stack]", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")
# how /proc/PID/maps names shared memory without a file of its own: MAP_SHARED|MAP_ANONYMOUS,
# SysV shm, memfd and POSIX shm objects
SHARED_ANON = ("/dev/zero", "/SYSV", "[anon_shmem", "/memfd:", "/dev/shm/")


def is_anonymous(m) -> bool:
    """Memory no file on disk backs: unnamed, [heap], prctl-named [anon:...], or shared memory
    (which the kernel names after /dev/zero, the SysV key, the memfd or the shm object)."""
    if m.shared and m.path.startswith(SHARED_ANON):
        return True
    return not m.path or m.path == "[heap]" or m.path.startswith("[anon")


@dataclass
class AnonRun:
    """Adjacent anonymous private mappings (any permissions), less the heaps: a chunk lies
    inside one run, however mprotect split its mapping or the kernel merged it with its
    neighbours. `readable`: the [start, end) parts where headers are looked for (a PROT_NONE
    part can be inside a chunk, never hold its header)."""

    start: int
    end: int
    readable: list


def anon_runs(mem, exclude: list[tuple[int, int]]) -> list[AnonRun]:
    """The runs of adjacent anonymous private mappings, cut where an excluded range (a heap)
    lies, in address order."""
    runs: list[list] = []  # [start, end, [(a, b) readable]]
    for m in mem.mappings():
        if m.shared or m.is_file or m.path in KERNEL_PSEUDO:
            continue
        if runs and runs[-1][1] == m.start:
            runs[-1][1] = m.end
        else:
            runs.append([m.start, m.end, []])
        if m.readable:
            rd = runs[-1][2]
            if rd and rd[-1][1] == m.start:
                rd[-1] = (rd[-1][0], m.end)
            else:
                rd.append((m.start, m.end))
    cuts = merge_ranges(exclude)
    ends = [b for _a, b in cuts]
    out = []
    for start, end, readable in runs:
        pieces, lo = [], start
        for a, b in cuts[bisect.bisect_right(ends, start):]:
            if a >= end:
                break
            pieces.append((lo, a))
            lo = b
        pieces.append((lo, end))
        for lo, hi in pieces:
            lo = (lo + PAGE - 1) & ~(PAGE - 1)
            if lo < hi:
                out.append(AnonRun(lo, hi, [(max(a, lo), min(b, hi)) for a, b in readable
                                            if a < hi and lo < b]))
    return out
