"""Shared pytest fixtures: the compiled C fixtures, started processes and their cores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import (STACKS_FLAGS, SYS_PAUSE, Running, compile_fixture, gcore,  # noqa: E402
                     start_fixture, start_stacks, wait_syscalls)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_program: a real Debian program (python3, sqlite3, memcached, nginx, "
        "redis-server) driven into a known state and checked live and as a core "
        "(tests/test_real_programs.py, tests/test_real_redis.py)")


@pytest.fixture(scope="session", autouse=True)
def symbol_cache_dir(tmp_path_factory):
    """Every test (and every mdbpy it starts) caches symbol tables in a temp dir, never in
    the user's ~/.cache; and sees no debuginfod: no server (a test never reaches the
    network) and an empty cache of its own, not the user's (tests/test_debuginfod.py sets
    both up itself)."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("symcache")
    mp.setenv("MDBPY_CACHE_DIR", str(d))
    mp.delenv("DEBUGINFOD_URLS", raising=False)
    mp.setenv("DEBUGINFOD_CACHE_PATH", str(tmp_path_factory.mktemp("debuginfod")))
    yield d
    mp.undo()


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def basic_exe(build_dir) -> Path:
    return compile_fixture("basic", build_dir)


@pytest.fixture
def basic_proc(basic_exe):
    """A running `basic` fixture, killed after the test."""
    r: Running = start_fixture(basic_exe)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="session")
def basic_gcore(basic_exe, build_dir):
    """(Running info, core path) of a `basic` fixture cored by gdb's gcore, then killed."""
    r = start_fixture(basic_exe)
    try:
        core = gcore(r.pid, build_dir / "basic-gcore")
        info = dict(r.info)
    finally:
        r.stop()
    return info, core


@pytest.fixture(scope="session")
def stacks_exe(build_dir) -> Path:
    return compile_fixture("stacks", build_dir, flags=STACKS_FLAGS)


@pytest.fixture(scope="session")
def stacks_parked(stacks_exe, build_dir):
    """(Running, core path): a parked `stacks` fixture, left running, and a gcore of it taken
    in that state, so live and core views of the same stacks can be compared."""
    r = start_stacks(stacks_exe)
    try:
        yield r, gcore(r.pid, build_dir / "stacks-gcore")
    finally:
        r.stop()


@pytest.fixture(scope="session")
def calls_exe(build_dir) -> Path:
    """fixtures/calls.c (main calling a local function and libc through the PLT), built like
    stacks: optimized, no frame pointer, with DWARF."""
    return compile_fixture("calls", build_dir, flags=STACKS_FLAGS)


@pytest.fixture(scope="session")
def calls_parked(calls_exe, build_dir):
    """(Running, core path): a `calls` fixture parked in pause(), left running, and a gcore
    of it in that state."""
    r = start_fixture(calls_exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        yield r, gcore(r.pid, build_dir / "calls-gcore")
    finally:
        r.stop()
