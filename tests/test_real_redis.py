"""redis-server, the real program of the jemalloc module: Debian's build links Debian's stripped
libjemalloc.so.2, so mdbpy finds jemalloc's state by its verified heuristics.

redis-server runs on a free loopback port with no persistence (--save '', --appendonly no, a
temporary --dir) and without jemalloc's background thread (--jemalloc-bg-thread no: that
thread purges dirty pages on its own clock, which would change the resident figure between
INFO and mdbpy's look). A pipelined socket loads 100,000 keys of mixed types: strings of 1 to
200 bytes (every 1,000th one 40,000 bytes: a large extent), hashes, lists, sets and sorted
sets. Once INFO's figures stop moving, mdbpy looks at the process live and as a core.

INFO's allocator_allocated, allocator_active and allocator_resident are jemalloc's
stats.allocated/active/resident as redis's cron last read them (every 100 ms, after an epoch
refresh), before the INFO that prints them runs. So the INFO taken after mdbpy has looked
(and after a cron) gives the state mdbpy saw, provided the idle server's cron allocates
nothing, which two equal readings before the look show. redis has no leak: ::findleaks must
find none, ::heap_verify nothing, and mdbpy must warn of nothing.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from support import gcore, run_mdbpy
from test_real_programs import BENIGN, connect, free_port, need, wait_blocked

pytestmark = pytest.mark.real_program

KEYS = 100_000
BIG = 40_000  # bytes of every 1,000th string: a large extent
CRON = 0.3  # seconds: more than one cron period at redis's default hz 10
STEADY_TRIES = 50
COMMANDS = "::je_stats; ::findleaks; ::heap_verify"
ALLOCATOR = ("allocated", "active", "resident")


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def command(i: int) -> bytes:
    """The i-th key's command: its type by i % 5."""
    k = b"key:%d" % i
    return [resp(b"SET", k, b"v" * (BIG if i % 1000 == 0 else i % 200 + 1)),
            resp(b"HSET", k, b"f1", b"%d" % i, b"f2", b"x" * (i % 50)),
            resp(b"RPUSH", k, b"a", b"b" * (i % 30), b"%d" % i),
            resp(b"SADD", k, b"m1", b"m2", b"%d" % i),
            resp(b"ZADD", k, b"1", b"z1", b"2", b"%d" % i)][i % 5]


def load(port: int, proc) -> None:
    with connect(port, proc) as c, c.makefile("rb") as f:
        c.sendall(b"".join(command(i) for i in range(KEYS)))
        for i in range(KEYS):
            line = f.readline()
            assert line[:1] in (b"+", b":"), (i, line)
        c.sendall(resp(b"DBSIZE"))
        assert f.readline() == b":%d\r\n" % KEYS


def info(port: int, proc) -> dict[str, int]:
    """INFO memory's allocator_allocated/active/resident, on a connection of its own (closed
    before returning: the client's memory is freed again)."""
    with connect(port, proc) as c, c.makefile("rb") as f:
        c.sendall(resp(b"INFO", b"memory"))
        n = int(f.readline()[1:])
        body = f.read(n + 2).decode()
    fields = dict(line.split(":", 1) for line in body.split("\r\n") if ":" in line)
    return {k: int(fields[f"allocator_{k}"]) for k in ALLOCATOR}


def steady(port: int, proc) -> None:
    """Until two INFO readings a cron apart agree: the load's incremental dict rehashing
    (which the cron drives) and the first INFOs' own warm-up are over, and the idle server's
    cron moves nothing."""
    last = None
    for _ in range(STEADY_TRIES):
        time.sleep(CRON)
        now = info(port, proc)
        if now == last:
            return
        last = now
    pytest.fail(f"redis's allocator figures never settled: last {last}")


def look(*target) -> tuple[dict[str, int], list[str], list[str]]:
    """(::je_stats' figures, the other lines printed, stderr's lines but BENIGN ones)."""
    r = run_mdbpy(*target, "-e", COMMANDS, timeout=180)
    lines = r.stdout.splitlines()
    stats = dict(ln.split() for ln in lines[:7])
    assert r.returncode == 0, r.stderr
    return ({k: int(stats[k]) for k in ALLOCATOR}, lines[7:],
            [ln for ln in r.stderr.splitlines() if not BENIGN.search(ln)])


@pytest.fixture(scope="module")
def redis_seen(tmp_path_factory):
    """{'live'|'core': look(), 'after': INFO's figures after the looks}."""
    exe = need("redis-server")
    tmp = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no",
                             "--jemalloc-bg-thread", "no", "--loglevel", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        load(port, proc)
        steady(port, proc)
        wait_blocked(proc.pid)
        seen = {"live": look("-p", proc.pid)}
        core = gcore(proc.pid, tmp / "redis")
        try:
            time.sleep(CRON)
            seen["after"] = info(port, proc)
            seen["core"] = look(exe, core)
        finally:
            os.unlink(core)
        yield seen
    finally:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("kind", ["live", "core"])
def test_je_stats_equal_info_memory(redis_seen, kind):
    """::je_stats' allocated, active and resident (counted from the walk; resident adds the
    bases' own counter) are INFO memory's allocator_* figures of the state mdbpy saw: those
    of the INFO after the looks, not before (the INFO before may itself move them: its
    allocations can make a tcache flush or fill, which its own figures predate)."""
    assert redis_seen[kind][0] == redis_seen["after"]


@pytest.mark.parametrize("kind", ["live", "core"])
def test_no_leaks_and_verify_clean(redis_seen, kind):
    _stats, lines, warnings = redis_seen[kind]
    assert lines == ["findleaks: no memory leaks detected", "jemalloc: heap is clean"]
    assert warnings == []
