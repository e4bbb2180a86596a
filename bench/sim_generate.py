#!/usr/bin/env python3
"""Simulator generator speed: build a heap of N objects (default 1,000,000: ~380 MiB of slabs
with a 100,000-node list, a 100,000-node tree, pointer arrays and 1% leaks), then write its
program, core and truth. Prints the time of each step and the peak memory.

Usage: python bench/sim_generate.py [N] [DIR]   (DIR: where to write; a temp dir by default,
removed afterwards). Then e.g. `mdbpy DIR/simheap DIR/simheap.core -e ::findleaks`.
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time

from mdbpy.sim.build import write
from mdbpy.sim.generate import generate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    keep = sys.argv[2] if len(sys.argv) > 2 else None
    t0 = time.perf_counter()
    r = generate(n, 0.01, seed=1)
    t1 = time.perf_counter()
    out = keep or tempfile.mkdtemp(prefix="mdbpy-simgen-")
    try:
        prog, core, _ = write(r, out)
        t2 = time.perf_counter()
    finally:
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
    slabs = sum(c["slabs"] for c in r.truth["caches"].values())
    print(f"{n} objects, {len(r.truth['leaks'])} leaked, {slabs} slabs")
    print(f"generate {t1 - t0:.2f} s, write {t2 - t1:.2f} s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if keep:
        print(f"mdbpy {prog} {core}")


if __name__ == "__main__":
    main()
