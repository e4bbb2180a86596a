"""Benchmark: jemalloc heaps of realistic sizes, live and as a core, against reading them.

Starts fixtures/jemalloc_heap.c linked with a build of tests/jemalloc_builds.py (N kept regions
of mixed sizes in the main thread, 12 planted leaks, regions in two threads' tcaches): the -g
build of .ci/build-jemalloc (symbols and DWARF), Debian's stripped libjemalloc2, bullseye's
5.2.1, or the static _rjem_ build stripped of every symbol (the last three found by the
heuristics, whose search is then part of every time below), cores it with gcore, and on each
target times:

  - the plain read of every extent in use (the floor: reading the heap once);
  - findleaks whole, in a fresh session: the emap walk, the regions, the tcaches, the scan,
    the mark and the report (what `::findleaks` costs a user), and its ratio to the read;
  - the region walk alone (the allocator's buffer table), in another fresh session;
  - the command as a user runs it: `mdbpy TARGET -e ::findleaks` less `mdbpy TARGET -e
    ::status`, best of three.

Run: python bench/jemalloc_bench.py [--build=dwarf|debian|bullseye|rjemstripped] [N ...]
     (default: dwarf, N 100000 1000000)
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
sys.path.insert(0, str(ROOT / "bench"))

from jemalloc_builds import (compile_bullseye, compile_debian, compile_dwarf,  # noqa: E402
                             compile_rjem)
from ptmalloc_bench import command, timed  # noqa: E402
from support import gcore, start_fixture  # noqa: E402

from mdbpy.heap.leaks import find_leaks  # noqa: E402
from mdbpy.session import Session  # noqa: E402


def fresh(open_target, fn):
    """(seconds, result) of fn(session) in a session of its own: nothing read before counts."""
    s = Session(open_target(), out=io.StringIO(), err=io.StringIO())
    try:
        return timed(lambda: fn(s))
    finally:
        s.close()


def bench(open_target, args: list[str]) -> None:
    from mdbpy_commands.jemalloc.allocator import JemallocAllocator
    from mdbpy_commands.jemalloc.extents import active, extents
    from mdbpy_commands.jemalloc.state import locate

    def read_all(s):
        ex = extents(s, locate(s))
        live = ex.select(active(ex))
        ranges = list(zip(live.base.tolist(), (live.base + live.size).tolist()))
        t0 = time.perf_counter()
        n = sum(len(data) for a, b in ranges for _addr, data in s.mem.blocks(a, b))
        return time.perf_counter() - t0, n

    _, (read, nbytes) = fresh(open_target, read_all)
    whole, rep = fresh(open_target, find_leaks)
    walk, t = fresh(open_target, lambda s: JemallocAllocator(s).buffers())
    cli = command(args, "::findleaks")[0] - command(args, "::status")[0]
    print(f"  plain read of the extents {read:7.3f} s   {nbytes >> 20} MiB, {len(t)} regions")
    print(f"  findleaks whole           {whole:7.3f} s   {whole / read:5.1f}x the read; "
          f"{len(rep.leaks)} leaks (planted 12)")
    print(f"  region walk alone         {walk:7.3f} s")
    print(f"  ::findleaks less ::status {cli:7.3f} s   {cli / read:5.1f}x the read")


BUILDS = {"dwarf": compile_dwarf, "debian": compile_debian, "bullseye": compile_bullseye,
          "rjemstripped": lambda name, d: compile_rjem(name, d, strip="all")}


def main() -> None:
    args = sys.argv[1:]
    build = "dwarf"
    if args and args[0].startswith("--build="):
        build = args.pop(0).split("=", 1)[1]
    sizes = [int(a) for a in args] or [100_000, 1_000_000]
    from mdbpy.target.core import open_file_target
    from mdbpy.target.live import LiveTarget

    with tempfile.TemporaryDirectory() as d:
        exe = BUILDS[build]("jemalloc_heap", Path(d))
        print(f"build: {build}")
        for n in sizes:
            r = start_fixture(exe, n, timeout=300)
            try:
                core = gcore(r.pid, Path(d) / f"je{n}")
                print(f"live process ({n} regions kept)")
                bench(lambda: LiveTarget(r.pid), ["-p", str(r.pid)])
                print(f"core file ({n} regions kept)")
                bench(lambda: open_file_target(str(core), exe=str(exe)), [str(exe), str(core)])
            finally:
                r.stop()
                for f in Path(d).glob(f"je{n}.*"):
                    f.unlink()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
