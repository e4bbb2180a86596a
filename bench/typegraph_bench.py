#!/usr/bin/env python3
"""::typegraph beside ::findleaks on the same heap of about 200,000 buffers.

fixtures/typegraph.c with N builds a list of N/2 struct node and a balanced tree of N/2 struct
tnode beside its small structures, under glibc malloc; one live session runs `::findleaks -f`
and `::typegraph -f` alternately, several times each, and prints the best and median of each
and their ratio (the goal: typegraph within 2x of findleaks). What is compared: both are the
whole command as a user types it, with -f, in one session: each walks nothing again (the
allocators' tables are the session's, built once), and each reads the heap and scans it again.
The typegraph also keeps, across -f, its catalogue of types (every type's plan and every
object's typed variables' evidence words: they come from the DWARF alone, like the on-disk
type index): its cost when that is dropped too is printed apart (`catalogue rebuilt`), and so
is the first typegraph of the process, which also builds the types of every typed global
(libc's too, with libc6-dbg). Then the typegraph's phases (heap scan, typed roots, vtables,
propagation) and how many typed buffers propagation expanded.

Usage: python bench/typegraph_bench.py [N] [runs]   (default 200000 buffers, 3 runs)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import compile_fixture, engine_session, run_in, start_fixture  # noqa: E402


def timed(s, cmd: str) -> float:
    t0 = time.perf_counter()
    run_in(s, cmd)
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    from mdbpy.types.graph import GRAPH_KEY
    from mdbpy.types.graph.catalog import CATALOG_KEY

    with tempfile.TemporaryDirectory() as d:
        exe = compile_fixture("typegraph", Path(d))
        r = start_fixture(exe, Path(d) / "report", n, timeout=120)
        try:
            with engine_session(r.pid) as s:
                first = timed(s, "::typegraph -f")
                leaks, graph, cold = [], [], []
                for _ in range(runs):
                    leaks.append(timed(s, "::findleaks -f"))
                    graph.append(timed(s, "::typegraph -f"))
                    st = s.cache[GRAPH_KEY].stats()
                    s.cache.pop(CATALOG_KEY)
                    cold.append(timed(s, "::typegraph -f"))
        finally:
            r.stop()
    typed = sum(row["buffers"] for row in st["rows"][:4])
    print(f"heap: {st['buffers']} buffers, {st['bytes']} bytes; {st['edges']} pointers "
          f"between buffers; {typed} typed ({100.0 * typed / st['buffers']:.1f}%)")
    for name, ts in (("findleaks -f", leaks), ("typegraph -f", graph),
                     ("typegraph -f, catalogue rebuilt", cold)):
        print(f"{name:<31s} best {min(ts):.3f}s  median {statistics.median(ts):.3f}s")
    print(f"typegraph (first, types of every typed global built): {first:.3f}s")
    print(f"ratio typegraph/findleaks (best): {min(graph) / min(leaks):.2f}x; catalogue "
          f"rebuilt: {min(cold) / min(leaks):.2f}x")
    phases = ", ".join(f"{k} {v:.3f}s" for k, v in st["timings"].items())
    print(f"typegraph phases (last run, catalogue kept): {phases}; {st['steps']} typed "
          f"buffers expanded in {st['runs']} run(s), "
          f"{1e6 * st['timings']['propagate'] / max(st['steps'], 1):.2f} us each")


if __name__ == "__main__":
    main()
