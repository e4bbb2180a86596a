#!/usr/bin/env python3
"""findleaks on the simulator's million-object heap against a plain read of the same bytes.

The heap is bench/sim_generate.py's: 1,000,000 allocated objects (about 375 MiB of slabs) with
1% leaked, a 100,000-node linked list, a 100,000-node tree and arrays of pointers. The core is
opened as `mdbpy PROG CORE` opens it (open_file_target, then a Session) and the bench prints:
  - findleaks: the wall time of the whole engine (finding the allocator, reading its caches and
    slabs, the buffer table, roots, the scan, coalescing with the track records), and whether
    the leaks found are exactly the truth's;
  - the plain read: the candidate regions findleaks scans, read through the target in large
    blocks (pread, a copy into memory) with nothing scanned, in a fresh Session, after
    findleaks so that both see the page cache warm. findleaks itself reads a core's heap in
    place through its mapping (Target.mapped), so it is not charged for the copy; it still
    reads every word of the regions, and maps their pages (Target.warm does that in a
    thread while the table is built, and its time is findleaks'). The bench also shows the
    in-place read alone;
  - their ratio (the issue's target: at most 3) and the peak RSS (target: under 2 GiB).
Each is run REPEAT times in fresh sessions and the best time is compared (noise from other work
on the machine only ever adds time), the medians shown beside. Wall and CPU times are both
shown: on a machine shared with other work, wall time measures the queue for the CPUs
(findleaks' scan runs in up to four threads, so on an idle machine its wall time is below its
CPU time).
Imports (numpy, scipy, mdbpy's modules) are done before timing: a process pays for them once,
not per scan.

With --cold (root only), the same pair is measured again with the page cache dropped before
each run, so that both read the core from the disk, as a first look at a fresh core does.

Usage: python bench/sim_findleaks.py [DIR] [--profile] [--cold]
  DIR: a directory written by `python bench/sim_generate.py 1000000 DIR` (reused), or a new
  temporary one generated here and removed afterwards. --profile prints findleaks' cProfile.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
from statistics import median
import sys
import tempfile
import time
from pathlib import Path

N_OBJECTS = 1_000_000
LEAK_FRACTION = 0.01
PROGRAM = "simheap"
REPEAT = 5  # runs of each, in fresh sessions: a shared machine's noise is one-sided


def open_session(directory: Path):
    from mdbpy.session import Session
    from mdbpy.target.core import open_file_target

    prog = directory / PROGRAM
    target = open_file_target(str(prog) + ".core", exe=str(prog))
    return Session(target, out=io.StringIO(), err=io.StringIO())


def findleaks(directory: Path, profile: bool):
    """(seconds, leaked addresses, the regions its scan read) of one findleaks."""
    from mdbpy.heap.leaks import find_leaks
    from mdbpy.heap.scan import scan_regions

    s = open_session(directory)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            (alloc,) = prof.runcall(s.allocators)
            report = prof.runcall(find_leaks, s, [alloc])
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        else:
            (alloc,) = s.allocators()
            report = find_leaks(s, [alloc])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, {leak.addr for leak in report.leaks}, scan_regions(s.mem, report.table)
    finally:
        s.close()


def plain_read(directory: Path, regions) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, bytes) to read the regions in large blocks, in a fresh
    session."""
    s = open_session(directory)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        total = 0
        for a, b in regions:
            for _addr, data in s.mem.blocks(a, b):
                total += len(data)
        return time.perf_counter() - t0, time.process_time() - c0, total
    finally:
        s.close()


def touch_in_place(directory: Path, regions) -> float:
    """Wall seconds to read every word of the regions in place, through the target's mapping
    (summed with numpy, block by block as findleaks' scan does): the floor of an in-place
    reader, shown beside the plain read."""
    import numpy as np

    from mdbpy.heap.scan import BLOCK

    s = open_session(directory)
    try:
        t0 = time.perf_counter()
        for a, b in regions:
            for at in range(a, b, BLOCK):
                n = min(BLOCK, b - at) & ~7
                with s.target.mapped(at, n) as view:
                    data = view if view is not None else s.mem.read(at, n)
                    np.frombuffer(data, np.uint64).sum()
        return time.perf_counter() - t0
    finally:
        s.close()


def drop_caches() -> None:
    """Empty the kernel's page cache (root only), so the next run reads the core from disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def import_once() -> None:
    """What a process imports once, whatever the heap: numpy, scipy, and every public module of
    mdbpy and of its dcmd modules (not part of any one scan's cost; with PYTHONDONTWRITEBYTECODE set,
    an import even compiles the module)."""
    import importlib
    import pkgutil

    import numpy  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401

    import mdbpy
    import mdbpy_commands

    for pkg in (mdbpy, mdbpy_commands):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not m.name.rsplit(".", 1)[1].startswith("_"):  # __main__; _kernel is no module
                importlib.import_module(m.name)


def main() -> None:
    import_once()
    args = [a for a in sys.argv[1:] if a not in ("--profile", "--cold")]
    profile = "--profile" in sys.argv[1:]
    cold = "--cold" in sys.argv[1:]
    given = Path(args[0]) if args else None
    directory = given or Path(tempfile.mkdtemp(prefix="mdbpy-simleaks-"))
    try:
        if not (directory / (PROGRAM + ".core")).exists():
            from mdbpy.sim.build import write
            from mdbpy.sim.generate import generate

            print(f"generating {N_OBJECTS} objects ({LEAK_FRACTION:.0%} leaked) in {directory}")
            write(generate(N_OBJECTS, LEAK_FRACTION, seed=1, name=PROGRAM), str(directory))
        truth = json.loads((directory / (PROGRAM + ".truth.json")).read_text())
        want = {x["address"] for x in truth["leaks"]}
        runs = [findleaks(directory, profile) for _ in range(1 if profile else REPEAT)]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
        regions = runs[0][3]
        reads = [plain_read(directory, regions) for _ in range(len(runs))]
        nbytes = reads[0][2]
        exact = all(r[2] == want for r in runs)
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        read, read_cpu = min(r[0] for r in reads), min(r[1] for r in reads)
        mwall, mread = median(r[0] for r in runs), median(r[0] for r in reads)
        print(f"best of {len(runs)} runs each (median in brackets)")
        print(f"findleaks    {wall:6.3f} s wall {cpu:6.3f} s CPU  [{mwall:.3f} s]  "
              f"{len(runs[0][2])} leaks, {'exactly the truth' if exact else 'NOT the truth'} "
              f"({len(want)} planted)")
        print(f"plain read   {read:6.3f} s wall {read_cpu:6.3f} s CPU  [{mread:.3f} s]  "
              f"{nbytes >> 20} MiB in {len(regions)} region(s)")
        touch = min(touch_in_place(directory, regions) for _ in range(len(runs)))
        print(f"in place     {touch:6.3f} s wall (every word read through the mapping)")
        print(f"ratio        {wall / read:6.2f}   wall {cpu / read_cpu:6.2f}   CPU  "
              f"[{mwall / mread:.2f}]   (target: at most 3); {wall / touch:.2f} to in place")
        print(f"peak RSS     {peak:6d} MiB (target: under 2048); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if cold:
            drop_caches()
            cwall, ccpu, _, _ = findleaks(directory, False)
            drop_caches()
            cread, cread_cpu, _ = plain_read(directory, regions)
            print(f"cold cache: findleaks {cwall:.2f} s wall ({ccpu:.2f} s CPU), plain read "
                  f"{cread:.2f} s wall ({cread_cpu:.2f} s CPU), ratio {cwall / cread:.2f}")
    finally:
        if given is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
