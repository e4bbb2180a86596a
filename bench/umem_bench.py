"""findleaks on a libumem heap of 200,000 buffers (about 400 MB), with the plain read time of
the same bytes for comparison.

The heap is the one of a small program that mallocs 200,000 buffers of 2000 bytes under
UMEM_DEBUG=default UMEM_LOGGING=transaction, keeps every other one on a linked list and drops
the rest (100,000 leaks in one group):

- synthetic (always): tests/umem_synth.py's list_heap builds that heap as the real allocator
  lays it out (slabs, audit bufctls on the hash chains, buftags, malloc tags), and the bench
  writes it as an ELF core and reads it back, so the numbers are those of a core file;
- real (when MDBPY_LIBUMEM names a directory with a built libumem_malloc.so.0, see
  tests/test_umem_real.py): the C program runs under that library and the bench attaches.

For each it times collecting the candidates (every cache's buffers and states), ::findleaks'
engine (candidates again from the session cache, roots, the scan, the leak records) and a
plain read of every heap span's bytes.

    python bench/umem_bench.py [N]
    MDBPY_LIBUMEM=/path/to/libumem python bench/umem_bench.py [N]
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mdbpy.heap.leaks import find_leaks  # noqa: E402
from mdbpy.session import Session  # noqa: E402

SIZE = 2000

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
struct node { struct node *next; char pad[%(size)d - 8]; };
struct node *head;
int main(void) {
    for (long i = 0; i < %(n)d; i++) {
        struct node *p = malloc(sizeof *p);
        if (i %% 2 == 0) { p->next = head; head = p; }
    }
    printf("READY\n");
    fflush(stdout);
    pause();
    return 0;
}
"""


def measure(label: str, session) -> None:
    """Collect, findleaks and the plain read of the heap spans, printed as one block."""
    t0 = time.perf_counter()
    alloc = session.allocators()[0]
    table = alloc.candidates()
    t1 = time.perf_counter()
    report = find_leaks(session, [alloc])
    t2 = time.perf_counter()
    nbytes = 0
    for a, b in alloc.heap_regions():
        for _addr, data in session.mem.blocks(a, b):
            nbytes += len(data)
    t3 = time.perf_counter()
    leaked = sum(1 for g in report.groups for _m in g.members)
    read = t3 - t2
    print(f"{label}:")
    print(f"  candidates: {len(table)} ({t1 - t0:.2f} s to collect)")
    print(f"  findleaks: {leaked} leaked in {len(report.groups)} groups, {t2 - t1:.2f} s")
    print(f"  plain read of the heap spans: {nbytes / 2**20:.0f} MiB in {read:.2f} s")
    print(f"  findleaks / read: {(t2 - t1) / read:.1f}x, "
          f"with collect: {(t2 - t0) / read:.1f}x")


def synthetic(n: int) -> None:
    from umem_synth import LIB, list_heap

    from mdbpy.target.core import CoreTarget
    from mdbpy.target.gcore import write_core

    t0 = time.perf_counter()
    u, _bufs = list_heap(n)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "umem.core")
        size = write_core(u.target(), path)
        print(f"synthetic heap of {n} buffers built and written as a {size / 2**20:.0f} MiB "
              f"core in {time.perf_counter() - t0:.1f} s")
        del u.m.segs  # the heap's bytes are in the core now
        session = Session(CoreTarget(path), out=io.StringIO(), err=io.StringIO())
        try:
            lib, exe = u.symbols()
            session.symbols.add_symbols(LIB, lib)
            session.symbols.add_symbols("a.out", exe, is_exe=True)
            measure("synthetic libumem heap, core file", session)
        finally:
            session.close()


def real(lib: str, n: int) -> None:
    from mdbpy.target.live import LiveTarget

    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "big.c", Path(d) / "big"
        src.write_text(PROGRAM % {"n": n, "size": SIZE})
        subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
        env = dict(os.environ, UMEM_DEBUG="default", UMEM_LOGGING="transaction",
                   LD_PRELOAD=str(Path(lib) / "libumem_malloc.so.0"))
        proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout.readline().startswith("READY")
            session = Session(LiveTarget(proc.pid), out=io.StringIO(), err=io.StringIO())
            try:
                measure("real libumem, live process", session)
            finally:
                session.close()
        finally:
            proc.kill()
            proc.wait()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    synthetic(n)
    lib = os.environ.get("MDBPY_LIBUMEM")
    if lib and os.path.exists(os.path.join(lib, "libumem_malloc.so.0")):
        real(lib, n)
    else:
        print("real libumem: skipped (MDBPY_LIBUMEM is not set to a directory with "
              "libumem_malloc.so.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
