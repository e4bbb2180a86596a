"""findleaks and ::umem_verify on big libumem heaps, beside the plain read time of the same bytes.

- synthetic (always): tests/umem_synth.py's list_heap builds the heap of a program that mallocs
  N buffers of 2000 bytes under UMEM_DEBUG=default UMEM_LOGGING=transaction, keeps every other
  one on a list and drops the rest, as the real allocator lays it out (slabs, audit bufctls on
  the hash chains, buftags, malloc tags); the bench writes it as an ELF core and reads it back;
- real (every build in ../shared/umem/, see tests/umem_builds.py): fixtures/umem_churn.c
  allocates M buffers of 24 to 1000 bytes in one thread, leaks every 100th, frees 100,000
  more (they sit in the magazine layer), with a write after free; the bench attaches to it,
  then opens its gcore core, and checks that findleaks finds exactly the planted leaks and
  ::umem_verify exactly the damaged buffer.

For each it times a plain read of every heap span's bytes (the floor: reading the heap once),
findleaks whole in a fresh session (what `::findleaks` costs a user), and its ratio to the
read; of that, collecting the candidates (every cache's buffers and states) and the rest (the
one heap's roots, the scan, the leak records); for the real builds the command as a user runs
it, `mdbpy TARGET -e ::findleaks` less `-e ::status` (the same start-up and attach), best of
three; and ::umem_verify.

    python bench/umem_bench.py [M [N]]      # M real buffers (1,000,000), N synthetic (200,000)
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import gcore  # noqa: E402

from ptmalloc_bench import command, timed  # noqa: E402

from mdbpy.heap.leaks import find_leaks  # noqa: E402
from mdbpy.session import Session  # noqa: E402

def measure(label: str, open_session, leaks: set[int] | None = None,
            args: list[str] | None = None) -> None:
    """findleaks whole in a fresh session (the buffers gathered, as a user's ::findleaks
    gathers them); then in another, collect alone, findleaks again over the collected
    buffers, ::umem_verify and the plain read of the heap spans; and with args (the CLI's
    target arguments), `mdbpy ARGS -e ::findleaks` less `-e ::status`. Printed as one block,
    with the check against the planted leaks when they are known."""
    from mdbpy_commands.umem.verify import verify_cache

    session = open_session()
    try:
        whole, report = timed(lambda: find_leaks(session))
    finally:
        session.close()
    session = open_session()
    try:
        alloc = next(a for a in session.allocators() if a.name == "umem")
        collect, table = timed(alloc.candidates)
        engine, _again = timed(lambda: find_leaks(session))
        check, bad = timed(lambda: [b for c in alloc.umem.caches()
                                    for b in verify_cache(alloc.umem, c)])
        read, nbytes = timed(lambda: sum(len(data) for a, b in alloc.heap_regions()
                                         for _addr, data in session.mem.blocks(a, b)))
    finally:
        session.close()
    found = {m.addr for g in report.groups for m in g.members}
    print(f"{label}:")
    print(f"  plain read of the heap spans: {nbytes / 2**20:.0f} MiB in {read:.3f} s")
    print(f"  findleaks whole: {whole:.3f} s, {whole / read:.1f}x the read; {len(found)} leaked "
          f"in {len(report.groups)} groups" + ("" if leaks is None else
                                              f" ({'exactly the' if found == leaks else 'NOT the'}"
                                              f" {len(leaks)} planted)"))
    print(f"  of which: collect {collect:.3f} s ({len(table)} candidates), the rest "
          f"{engine:.3f} s ({engine / read:.1f}x)")
    if args is not None:
        (leaks_wall, _peak), (status_wall, _) = (command(args, "::findleaks"),
                                                 command(args, "::status"))
        cli = leaks_wall - status_wall
        print(f"  ::findleaks less ::status: {cli:.3f} s, {cli / read:.1f}x the read")
    print(f"  ::umem_verify: {len(bad)} corrupt buffer{'s' if len(bad) != 1 else ''}, "
          f"{check:.3f} s ({check / read:.1f}x)")


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
        lib, exe = u.symbols()

        def open_session():
            session = Session(CoreTarget(path), out=io.StringIO(), err=io.StringIO())
            session.symbols.add_symbols(LIB, lib)
            session.symbols.add_symbols("a.out", exe, is_exe=True)
            return session

        measure("synthetic libumem heap, core file", open_session)


def real(build, n: int) -> None:
    """fixtures/umem_churn.c with n buffers under the build's malloc: live, then its core."""
    from umem_builds import compile_c, start

    from mdbpy.target.core import CoreTarget
    from mdbpy.target.live import LiveTarget

    with tempfile.TemporaryDirectory() as d:
        leaks = Path(d) / "leaks.txt"
        t0 = time.perf_counter()
        r = start(compile_c("umem_churn.c", Path(d) / "churn"), 1, n, 100, 100_000, leaks,
                  preload=build.malloc, timeout=600)
        try:
            planted = {int(x, 16) - 16 for x in leaks.read_text().split()}
            print(f"{build.name}: {n} buffers allocated in {time.perf_counter() - t0:.1f} s")
            for label, target, args in (
                    ("live process", lambda: LiveTarget(r.pid), ["-p", str(r.pid)]),
                    ("gcore core", lambda: CoreTarget(str(core)), lambda: [str(core)])):
                if label == "gcore core":
                    t0 = time.perf_counter()
                    core = gcore(r.pid, Path(d) / "core")
                    print(f"  (gcore: {core.stat().st_size / 2**20:.0f} MiB in "
                          f"{time.perf_counter() - t0:.1f} s)")
                    args = args()
                measure(f"{build.name}, {label}",
                        lambda: Session(target(), out=io.StringIO(), err=io.StringIO()),
                        planted, args)
        finally:
            r.stop()


def main() -> int:
    from umem_builds import SHARED, builds

    m = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    synthetic(n)
    found = builds()
    for build in found:
        real(build, m)
    if not found:
        print(f"real libumem: skipped (no builds in {SHARED})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
