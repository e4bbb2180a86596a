"""Benchmark: glibc malloc with a million chunks, live and as a core.

Starts fixtures/glibc_heap.c in `many N` mode (N live 48-byte list nodes plus N/100 leaked
24-byte chunks), cores it with gcore, and times on each target: a plain read of every heap
byte (the floor), locating the arenas, the full chunk walk with bins (::malloc_chunks' table),
and findleaks through the generic engine. Run: python bench/ptmalloc_bench.py [N]
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import compile_fixture, gcore, start_fixture  # noqa: E402

from mdbpy.heap.leaks import find_leaks  # noqa: E402
from mdbpy.session import Session  # noqa: E402


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"  {label:28s} {time.perf_counter() - t0:7.3f} s")
    return out


def bench(target, n: int) -> None:
    from mdbpy_commands.ptmalloc.allocator import PtmallocAllocator, chunk_table
    from mdbpy_commands.ptmalloc.locate import locate

    s = Session(target, out=io.StringIO(), err=io.StringIO())
    try:
        st = timed("locate (symbols)", lambda: locate(s))
        regions = st.heap_ranges()

        def read_all():
            total = 0
            for a, b in regions:
                for _addr, data in s.mem.blocks(a, b):
                    total += len(data)
            return total

        nbytes = timed("plain read of the heaps", read_all)
        t = timed("chunk walk + bins", lambda: chunk_table(s))
        print(f"    {len(t.addr)} chunks, {nbytes >> 20} MiB of heap")
        alloc = PtmallocAllocator(s)
        rep = timed("findleaks", lambda: find_leaks(s, [alloc]))
        print(f"    {len(rep.leaks)} leaks (planted {n // 100})")
    finally:
        s.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as d:
        exe = compile_fixture("glibc_heap", Path(d), flags=("-O2", "-g", "-Wno-use-after-free"))
        r = start_fixture(exe, "many", n, timeout=120)
        try:
            core = gcore(r.pid, Path(d) / "many")
            from mdbpy.target.live import LiveTarget

            print(f"live process ({n} chunks)")
            bench(LiveTarget(r.pid), n)
            from mdbpy.target.core import open_file_target

            print("core file")
            bench(open_file_target(str(core), exe=str(exe)), n)
        finally:
            r.stop()
    print(f"python {sys.version.split()[0]}, "
          f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores")


if __name__ == "__main__":
    main()
