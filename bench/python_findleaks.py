#!/usr/bin/env python3
"""findleaks on a real CPython (the system python3) against a plain read of the same bytes.

Starts tests/real/pyheap.py in its busy state (THREADS threads, default 6, each holding a dict
and a list of str and bytes objects, some of them mmapped chunks; four planted leaks; blocks
kept alive only from obmalloc's arenas), then, on the live process:
  - findleaks: the wall time of ::findleaks through the Python API (mdbpy.attach, then
    Debugger.findleaks(force=True): the allocator, its chunks, the roots, the scan of the
    heap and of every region the engine scans), and whether the leaks found are exactly the
    planted four;
  - the plain read: every range a findleaks of this process may read (each readable,
    writable, private mapping: malloc's heaps, mmapped chunks, obmalloc's arenas and the
    other anonymous mappings, thread stacks, and the data and bss of the loaded objects),
    read with os.pread from /proc/PID/mem in 4 MiB blocks, nothing scanned;
  - their ratio, and what findleaks -v says it examined (potential pointers, 8 bytes each)
    beside the bytes of the plain read (which are more: thread stacks below their stack
    pointers, untouched pages of the mappings, a heap's free space are in the mappings but
    not scanned; an untouched page reads fast, as the zero page).
Each is run REPEAT times and the best time is compared (noise only ever adds time), the
median shown beside. Imports are done before timing.

Usage: python bench/python_findleaks.py [THREADS]
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import start_fixture  # noqa: E402

PYTHON = "/usr/bin/python3"
DRIVER = ROOT / "tests" / "real" / "pyheap.py"
REPEAT = 5
BLOCK = 4 << 20
SKIP = ("[vvar]", "[vvar_vclock]", "[vsyscall]", "[vdso]")


def ranges(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, name) of every readable, writable, private mapping."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            perms = parts[1]
            name = parts[5].strip() if len(parts) > 5 else ""
            if perms[0] == "r" and perms[1] == "w" and perms[3] == "p" and name not in SKIP:
                a, b = (int(x, 16) for x in parts[0].split("-"))
                out.append((a, b, name))
    return out


def plain_read(pid: int, rs) -> tuple[float, int]:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        total = 0
        for a, b, _ in rs:
            for at in range(a, b, BLOCK):
                try:
                    total += len(os.pread(fd, min(BLOCK, b - at), at))
                except OSError:
                    pass
        return time.perf_counter() - t0, total
    finally:
        os.close(fd)


def findleaks(pid: int):
    """(wall seconds, leaked buffer addresses) of one full findleaks, attach not counted."""
    import mdbpy

    with mdbpy.attach(pid) as dbg:
        t0 = time.perf_counter()
        groups = dbg.findleaks(force=True)
        wall = time.perf_counter() - t0
    return wall, {m for g in groups for m in g.members}


def statistics(pid: int) -> str:
    import mdbpy

    with mdbpy.attach(pid) as dbg:
        return dbg.run("::findleaks -fv")


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    import mdbpy  # noqa: F401
    import numpy  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401

    r = start_fixture(Path(PYTHON), DRIVER, "busy", threads, timeout=120)
    try:
        planted = {r.addr(f"leak{k}") for k in range(4)}
        rs = ranges(r.pid)
        runs = [findleaks(r.pid) for _ in range(REPEAT)]
        reads = [plain_read(r.pid, rs) for _ in range(REPEAT)]
        stats = statistics(r.pid)
        with open(f"/proc/{r.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    finally:
        r.stop()
    nbytes = reads[0][1]
    wall, mwall = min(x[0] for x in runs), median(x[0] for x in runs)
    read, mread = min(x[0] for x in reads), median(x[0] for x in reads)
    leaks = runs[0][1]
    exact = all(x[1] == planted for x in runs)
    m = re.search(r"potential pointers => (\d+)", stats)
    words = int(m.group(1)) if m else 0
    print(f"python3 busy state: {threads} threads, RSS {rss >> 10} MiB; best of {REPEAT} runs "
          f"each (median in brackets)")
    print(f"findleaks    {wall:7.3f} s  [{mwall:.3f} s]  {len(leaks)} leaks, "
          f"{'exactly the planted 4' if exact else 'NOT the planted 4'}")
    print(f"plain read   {read:7.3f} s  [{mread:.3f} s]  {nbytes >> 20} MiB in {len(rs)} "
          f"mappings (every readable, writable, private one)")
    print(f"ratio        {wall / read:7.2f}   [{mwall / mread:.2f}]")
    print(f"findleaks -v examined {words} potential pointers ({words * 8 >> 20} MiB of words)")
    import subprocess

    target = subprocess.run([PYTHON, "--version"], capture_output=True, text=True).stdout
    print(f"target {PYTHON} ({target.strip()}), mdbpy on python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
