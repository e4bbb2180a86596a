#!/usr/bin/env python3
"""What running a program under mdbpy costs: `mdbpy -e ::status -- PROG` against `PROG`.

fixtures/run_churn.c does the same 240 million malloc/free pairs (about 5 s) in two shapes: in
8 threads one after the other (a malloc-heavy program: mdbpy sees almost no events, so this is
the cost of being traced at all, plus mdbpy's start-up and the stop at exit), and in 600
threads (every thread's creation and exit is a ptrace event mdbpy handles while the program
waits). The runs alternate, so a busy machine slows both alike; printed are the median and
best wall times and the median CPU times (the whole process tree's, steadier on a shared
machine) with their ratios, and mdbpy's fixed cost (start-up, ::status, the stop: the same run
of /bin/true), which a longer program shares out thinner.
Usage: python bench/run_overhead.py [runs]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ptmalloc_bench import run_once  # noqa: E402
from support import compile_fixture, mdbpy_cmd  # noqa: E402

OPS = 240_000_000
SHAPES = (("malloc-heavy, 8 threads", 8), ("thread churn, 600 threads", 600))


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        exe = str(compile_fixture("run_churn", Path(tmp), flags=("-O2",)))
        print(f"run to exit under mdbpy, {runs} runs each: median wall seconds, the best run's "
              f"(which a busy machine disturbs least), and median CPU seconds")
        print(f"{'program':28s} {'alone':>6s} {'mdbpy':>7s} {'ratio':>6s}   {'best':>6s} "
              f"{'mdbpy':>7s} {'ratio':>6s}   {'cpu':>6s} {'mdbpy':>7s} {'ratio':>6s}")
        for name, rounds in SHAPES:
            prog = [exe, str(rounds), str(OPS // rounds)]
            alone, under = [], []
            for _ in range(runs):
                alone.append(run_once(prog))
                under.append(run_once(mdbpy_cmd("-S", "-e", "::status", "--", *prog)))
            row = []
            for pick in (lambda xs: statistics.median(x[0] for x in xs),
                         lambda xs: min(x[0] for x in xs),
                         lambda xs: statistics.median(x[1] for x in xs)):
                a, m = pick(alone), pick(under)
                row.append(f"{a:6.3f} {m:7.3f} {m / a:6.3f}")
            print(f"{name:28s} " + "   ".join(row))
        true = mdbpy_cmd("-S", "-e", "::status", "--", "/bin/true")
        fixed = statistics.median(run_once(true)[0] for _ in range(runs))
        print(f"mdbpy's fixed cost (-- /bin/true): {fixed:.3f} s wall")


if __name__ == "__main__":
    main()
