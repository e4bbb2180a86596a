"""Benchmark: glibc malloc at realistic sizes, live and as a core, against reading the heap.

Starts fixtures/glibc_heap.c in `sized N` mode (N live chunks of 16 to 1024 bytes: a list of
nodes each holding a payload of a pseudo-random size, N/100 payloads leaked; `--many` for the
older mode of 48-byte nodes), cores it with gcore, and on each target times:

  - the plain read of every heap byte (the floor: reading the heap once);
  - findleaks whole, in a fresh session: locating the arenas, the chunk walk, the scan, the
    mark and the report's records (what `::findleaks` costs a user), and its ratio to the read;
  - the chunk walk alone (::malloc_chunks' table), in another fresh session;
  - the command as a user runs it: `mdbpy TARGET -e ::findleaks` less `mdbpy TARGET -e ::status`
    (start-up and attach are the same in both), best of three, and its peak resident memory
    beside the goal of 64 bytes per chunk plus 64 MiB (for a core this counts the pages of
    the core file mapped while scanning, up to the resident budget);
  - chap's `count leaked` on the same core, where CHAP names chap's binary.

Run: python bench/ptmalloc_bench.py [N ...] [--many]   (default N: 100000 1000000)
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

from support import compile_fixture, gcore, mdbpy_cmd, start_fixture  # noqa: E402

from mdbpy.heap.leaks import find_leaks  # noqa: E402
from mdbpy.session import Session  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_once(cmd: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak resident KiB) of one run of cmd, which must succeed.
    The kernel's figures cover the command and the children it reaped (CPU time summed, the
    peak the largest one's): a busy machine disturbs the CPU time far less than the wall."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=env)
    err = p.stderr.read().decode()  # before the wait: a full pipe would block the command
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def command(args: list[str], cmds: str) -> tuple[float, int]:
    """(best wall time of three runs of the mdbpy CLI, its peak resident KiB). Python may
    write its bytecode cache (as an installed mdbpy has one), whatever the environment says."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs = [run_once(mdbpy_cmd("-S", *args, "-e", cmds), env) for _ in range(3)]
    return min(wall for wall, _cpu, _peak in runs), max(peak for _w, _c, peak in runs)


def bench(open_target, args: list[str], leaks: int) -> None:
    from mdbpy_commands.ptmalloc.table import chunk_table
    from mdbpy_commands.ptmalloc.locate import locate

    s = Session(open_target(), out=io.StringIO(), err=io.StringIO())
    try:
        regions = locate(s).heap_ranges()

        def read_all():
            return sum(len(data) for a, b in regions for _addr, data in s.mem.blocks(a, b))

        read, nbytes = timed(read_all)
    finally:
        s.close()
    s = Session(open_target(), out=io.StringIO(), err=io.StringIO())
    try:
        whole, rep = timed(lambda: find_leaks(s))
    finally:
        s.close()
    s = Session(open_target(), out=io.StringIO(), err=io.StringIO())
    try:
        walk, t = timed(lambda: chunk_table(s))
    finally:
        s.close()
    (leaks_wall, peak), (status_wall, _) = command(args, "::findleaks"), command(args, "::status")
    cli = leaks_wall - status_wall
    print(f"  plain read of the heaps   {read:7.3f} s   {nbytes >> 20} MiB, {len(t.addr)} chunks")
    print(f"  findleaks whole           {whole:7.3f} s   {whole / read:5.1f}x the read; "
          f"{len(rep.leaks)} leaks (planted {leaks})")
    print(f"  chunk walk alone          {walk:7.3f} s")
    print(f"  ::findleaks less ::status {cli:7.3f} s   {cli / read:5.1f}x the read")
    per_chunk = (peak << 10) / len(t.addr)
    print(f"  ::findleaks peak resident {peak >> 10:7d} MiB  {per_chunk:5.0f} bytes "
          f"per chunk (goal: 64 per chunk + 64 MiB = {(64 * len(t.addr) >> 20) + 64} MiB)")


def chap(core: Path) -> None:
    exe = os.environ.get("CHAP")
    if not exe:
        return
    t0 = time.perf_counter()
    out = subprocess.run([exe, str(core)], input="count leaked\n", capture_output=True,
                         text=True, timeout=600)
    print(f"  chap count leaked         {time.perf_counter() - t0:7.3f} s   "
          f"{out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-200:]}")


def main() -> None:
    mode = "many" if "--many" in sys.argv else "sized"
    sizes = [int(a) for a in sys.argv[1:] if not a.startswith("--")] or [100_000, 1_000_000]
    from mdbpy.target.core import open_file_target
    from mdbpy.target.live import LiveTarget

    with tempfile.TemporaryDirectory() as d:
        exe = compile_fixture("glibc_heap", Path(d), flags=("-O2", "-g", "-Wno-use-after-free"))
        for n in sizes:
            r = start_fixture(exe, mode, n, timeout=300)
            try:
                core = gcore(r.pid, Path(d) / f"{mode}{n}")
                print(f"live process ({mode} {n})")
                bench(lambda: LiveTarget(r.pid), ["-p", str(r.pid)], n // 100)
                print(f"core file ({mode} {n})")
                bench(lambda: open_file_target(str(core), exe=str(exe)), [str(exe), str(core)],
                      n // 100)
                chap(core)
            finally:
                r.stop()
                for f in Path(d).glob(f"{mode}{n}.*"):
                    f.unlink()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
