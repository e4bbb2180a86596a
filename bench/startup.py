#!/usr/bin/env python3
"""Start-up cost: `mdbpy -p PID -e ::status` against `gdb -p PID -batch -ex 'info proc'`.

Builds and starts the basic fixture (a process linking libc, whose debug file is installed on
these machines), then times each command end to end, several runs each, and prints the median
and the best. Usage: python bench/startup.py [runs]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import compile_fixture, start_fixture  # noqa: E402


def timed(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return out


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_fixture("basic", Path(tmp))
        proc = start_fixture(exe)
        try:
            pid = str(proc.pid)
            rows = [("python -c pass", [sys.executable, "-c", "pass"]),
                    ("mdbpy -p PID -e ::status", [sys.executable, "-m", "mdbpy", "-S", "-p",
                                                  pid, "-e", "::status"])]
            if shutil.which("gdb"):
                rows.append(("gdb -p PID -batch -ex 'info proc'",
                             ["gdb", "-nx", "-p", pid, "-batch", "-ex", "info proc"]))
            print(f"start-up, {runs} runs each (seconds)")
            print(f"{'command':40s} {'median':>8s} {'best':>8s}")
            for name, cmd in rows:
                t = timed(cmd, runs)
                print(f"{name:40s} {statistics.median(t):8.3f} {min(t):8.3f}")
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
