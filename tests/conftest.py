"""Shared pytest fixtures: the compiled C fixtures, started processes and their cores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Running, compile_fixture, gcore, start_fixture  # noqa: E402


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
