"""Run mdbpy's fuzz targets for a long time (CI runs each for a few hundred inputs only).

    python bench/fuzz.py --seconds 600                 # every target, time shared equally
    python bench/fuzz.py --seconds 300 core-gdb lang-grammar
    python bench/fuzz.py --list

The targets are the (strategy, check) pairs of tests/test_fuzz_core.py, test_fuzz_lang.py and
test_fuzz_scenario.py. Each is run in batches of fresh random inputs (hypothesis, random seeds,
no example database) until its share of the time is spent; a failing batch is shrunk and its
smallest input printed, and the run goes on. The report gives per target the inputs tried
(shrinking included) and the failures. Run it at low priority: it uses one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def load_targets(workdir: Path) -> dict:
    """Every fuzz target, name -> (strategy, check); the core targets need the `basic`
    fixture compiled and a gdb core of it, made here once."""
    sys.path.insert(0, str(TESTS))
    import test_fuzz_core
    import test_fuzz_lang
    import test_fuzz_scenario
    from support import compile_fixture

    exe = compile_fixture("basic", workdir)
    return {**test_fuzz_core.targets(workdir, exe), **test_fuzz_lang.targets(),
            **test_fuzz_scenario.targets(workdir)}


def run_batch(strategy, check, examples: int, tried: list[int]) -> str | None:
    """One hypothesis run of up to `examples` random inputs; the failure report, or None."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategy)
    def batch(example):
        tried[0] += 1
        check(example)

    try:
        batch()
    except Exception as e:  # the target failed: report it and keep fuzzing
        notes = "\n".join(getattr(e, "__notes__", []))
        return "".join(traceback.format_exception_only(type(e), e)).strip() + "\n" + notes
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", help="target names (default: all)")
    ap.add_argument("--seconds", type=float, default=600, help="total time (default 600)")
    ap.add_argument("--batch", type=int, default=200, help="inputs per hypothesis run")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    args = ap.parse_args()
    os.nice(10)
    work = Path(tempfile.mkdtemp(prefix="mdbpy-fuzz-"))
    os.environ.setdefault("MDBPY_CACHE_DIR", str(work / "symcache"))
    targets = load_targets(work)
    if args.list:
        print("\n".join(targets))
        return 0
    names = args.targets or list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        ap.error(f"unknown target {unknown[0]} (see --list)")
    share = args.seconds / len(names)
    failed = 0
    print(f"{'target':<18}{'inputs':>10}{'batches':>9}{'failures':>10}{'seconds':>9}")
    for name in names:
        strategy, check = targets[name]
        tried, batches, failures = [0], 0, []
        start = time.monotonic()
        while time.monotonic() - start < share:
            report = run_batch(strategy, check, args.batch, tried)
            batches += 1
            if report is not None:
                failures.append(report)
        failed += len(failures)
        print(f"{name:<18}{tried[0]:>10}{batches:>9}{len(failures):>10}"
              f"{time.monotonic() - start:>9.0f}", flush=True)
        for report in failures:
            print("  " + report.replace("\n", "\n  "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
