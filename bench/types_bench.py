#!/usr/bin/env python3
"""Types from DWARF: the first index of libc's debug file, and ::print once it is cached.

Measured:

  1. the index build alone on libc's debug file (scan.py), in-process, several runs, with the
     names and the variables with a fixed location (functions' statics included) it finds;
  2. pyelftools visiting the same top-level DIEs, for comparison (one run: it is slow);
  3. the cached lookup, in-process: open the debug file, read the index back from the cache,
     build `struct malloc_state` and every member's type, and find `main_arena`'s type;
  4. `mdbpy -p PID -e 'main_arena::print'` end to end, each run a new process, first with an
     empty cache (the index is built), then with the cache the first wrote; and with -n (no
     heap notes, so no allocator is detected and walked for them);

plus gdb's `print main_arena` on the same process as a yardstick. End-to-end times include
Python's start and, where PYTHONDONTWRITEBYTECODE is set, compiling every module. Usage:
python bench/types_bench.py [runs]. Needs libc6-dbg (libc's debug file by build-id).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import compile_fixture, start_fixture  # noqa: E402

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def libc_debug_file() -> str:
    from mdbpy.symbols.elf import build_id_of

    bid = build_id_of(os.path.realpath(LIBC))
    path = f"/usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug"
    if not os.path.isfile(path):
        raise SystemExit(f"no debug file for libc ({path}): install libc6-dbg")
    return path


def scan_times(path: str, runs: int) -> tuple[list[float], int, int]:
    from elftools.elf.elffile import ELFFile

    from mdbpy.types.index import read_sections
    from mdbpy.types.scan import scan

    times, names, placed = [], 0, 0
    for _ in range(runs):
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            found = scan(read_sections(ELFFile(f)))
        times.append(time.perf_counter() - t0)
        names = sum(map(len, found.types.values())) + len(found.vars)
        placed = len(found.addrs) + len(found.tls)
    return times, names, placed


def pyelftools_time(path: str) -> float:
    from elftools.elf.elffile import ELFFile

    t0 = time.perf_counter()
    with open(path, "rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for _ in cu.get_top_DIE().iter_children():
                pass
    return time.perf_counter() - t0


def cached_lookup_times(path: str, runs: int) -> list[float]:
    from mdbpy.symbols.elf import build_id_of
    from mdbpy.types.dies import DwarfTypes

    bid = build_id_of(path)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MDBPY_CACHE_DIR"] = tmp
        DwarfTypes(path, bid)  # writes the cache entry
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            d = DwarfTypes(path, bid)
            t = d.type_named("struct", "malloc_state")
            for m in t.members:
                m.type.spelled()
            d.var_named("main_arena")
            times.append(time.perf_counter() - t0)
        del os.environ["MDBPY_CACHE_DIR"]
    return times


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return time.perf_counter() - t0


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    debug = libc_debug_file()
    print(f"libc's debug file: {debug} ({os.path.getsize(debug) >> 20} MiB)")
    t, names, placed = scan_times(debug, runs)
    label = f"index build (scan.py), {runs} runs"
    print(f"{label:44s} median {statistics.median(t):6.3f} s  best {min(t):6.3f} s"
          f"  ({names} names, {placed} placed variables)")
    print(f"{'pyelftools, top-level DIEs only, 1 run':44s}        {pyelftools_time(debug):6.3f} s")
    c = cached_lookup_times(debug, runs)
    print(f"{'cached lookup of struct malloc_state':44s} median {statistics.median(c):6.3f} s"
          f"  best {min(c):6.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_fixture("basic", Path(tmp))
        proc = start_fixture(exe)
        try:
            cmd = [sys.executable, "-m", "mdbpy", "-S", "-p", str(proc.pid), "-e",
                   "main_arena::print"]
            first, cached, plain = [], [], []
            for i in range(runs):
                env = dict(os.environ, MDBPY_CACHE_DIR=os.path.join(tmp, f"cache{i}"))
                first.append(timed(cmd, env))
                cached.append(timed(cmd, env))
                plain.append(timed(cmd[:-1] + ["main_arena::print -n"], env))
            for label, t in (("mdbpy main_arena::print, empty cache", first),
                             ("mdbpy main_arena::print, cached index", cached),
                             ("mdbpy main_arena::print -n, cached index", plain)):
                print(f"{label:44s} median {statistics.median(t):6.3f} s  best {min(t):6.3f} s")
            if shutil.which("gdb"):
                g = [timed(["gdb", "-nx", "-batch", "-p", str(proc.pid), "-ex",
                            "print main_arena"], dict(os.environ)) for _ in range(runs)]
                label = "gdb -p PID -batch -ex 'print main_arena'"
                print(f"{label:44s} median "
                      f"{statistics.median(g):6.3f} s  best {min(g):6.3f} s")
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
