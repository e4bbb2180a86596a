"""findleaks on a libumem heap of 200,000 buffers (about 400 MB), with the plain read time of
the same bytes for comparison.

A C program (compiled here) mallocs 200,000 buffers of 2000 bytes under a real portable libumem
(UMEM_DEBUG=default UMEM_LOGGING=transaction), keeps every other one on a linked list and drops
the rest. The bench attaches to it, times ::findleaks' engine (candidates, roots, scan) and a
plain read of every candidate's bytes. Needs MDBPY_LIBUMEM: the directory holding a built
libumem_malloc.so.0 (see tests/test_umem_real.py).

    MDBPY_LIBUMEM=/path/to/libumem python bench/umem_bench.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = 200_000
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


def main() -> int:
    lib = os.environ.get("MDBPY_LIBUMEM")
    if not lib or not os.path.exists(os.path.join(lib, "libumem_malloc.so.0")):
        print("MDBPY_LIBUMEM is not set to a directory with libumem_malloc.so.0; skipped")
        return 0
    from mdbpy.heap.leaks import find_leaks
    from mdbpy.session import Session
    from mdbpy.target.live import LiveTarget

    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "big.c", Path(d) / "big"
        src.write_text(PROGRAM % {"n": N, "size": SIZE})
        subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
        env = dict(os.environ, UMEM_DEBUG="default", UMEM_LOGGING="transaction",
                   LD_PRELOAD=str(Path(lib) / "libumem_malloc.so.0"))
        proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout.readline().startswith("READY")
            session = Session(LiveTarget(proc.pid))
            try:
                t0 = time.perf_counter()
                alloc = session.allocators()[0]
                table = alloc.candidates()
                t1 = time.perf_counter()
                report = find_leaks(session, alloc)
                t2 = time.perf_counter()
                nbytes = 0
                for a, b in alloc.heap_regions():
                    for _addr, data in session.mem.blocks(a, b):
                        nbytes += len(data)
                t3 = time.perf_counter()
            finally:
                session.close()
        finally:
            proc.kill()
            proc.wait()
    leaked = sum(g.count for g in report.groups)
    print(f"candidates: {len(table)} ({t1 - t0:.2f} s to collect)")
    print(f"findleaks: {leaked} leaked in {len(report.groups)} groups, {t2 - t1:.2f} s")
    print(f"plain read of the heap spans: {nbytes / 2**20:.0f} MiB in {t3 - t2:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
