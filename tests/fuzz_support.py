"""What the fuzz tests (tests/test_fuzz_*.py) and their long-run driver (bench/fuzz.py) share.

A fuzz target is a (strategy, check) pair: check(example) raises AssertionError when mdbpy
fails on that input: an exception that is not an MdbError, a message that is not one line, a
hang (the watchdog), or memory growth. In CI each target runs a few hundred derandomized
examples; MDBPY_FUZZ_EXAMPLES raises that count, and bench/fuzz.py loops the same targets with
fresh random seeds for a given time.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal

from hypothesis import HealthCheck, settings

ONE_LINE_ERROR = re.compile(r"mdbpy: [^\n]+|Usage: [^\n]*")
HANG_SECONDS = 30  # no single example comes near this; reaching it means a loop with no bound
MAX_RSS_GROWTH_MIB = 300  # a segment claiming terabytes must cost nothing like it


class Hang(AssertionError):
    """An example ran past HANG_SECONDS."""


def fuzz_settings(examples: int) -> settings:
    """max_examples from MDBPY_FUZZ_EXAMPLES when set (then seeds are random, for long runs),
    else `examples`, derandomized so CI sees the same inputs every time."""
    env = os.environ.get("MDBPY_FUZZ_EXAMPLES")
    return settings(max_examples=int(env) if env else examples, deadline=None,
                    derandomize=not env, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def watchdog(seconds: float = HANG_SECONDS):
    """Fail with Hang (instead of hanging the run) when the body takes longer than `seconds`."""

    def expired(signum, frame):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_one_line_errors(err: str) -> None:
    """Every line mdbpy wrote to its error stream is a one-line `mdbpy: ...` message (or the
    usage line that follows a usage error), and none reports an internal error."""
    for line in err.splitlines():
        assert ONE_LINE_ERROR.fullmatch(line), f"not a one-line error: {line!r}"
        assert "internal error" not in line, line


def assert_message(e: Exception) -> None:
    """An MdbError's message: one non-empty line."""
    msg = str(e)
    assert msg and "\n" not in msg, f"{type(e).__name__} message {msg!r}"


def max_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
