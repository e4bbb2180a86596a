"""opt.junk: with jemalloc filling freed regions with 0x5a, ::heap_verify reports each freed
region written after free (one free in its slab, one small and one large held by a tcache),
exactly, and no other, in 5.3 and in 5.2.1 (which fills in its tcache and arena paths); the
fill is known from the opt_junk_free global (5.3's -g build, 5.2.1's static library with
symbols) or from MALLOC_CONF / _RJEM_MALLOC_CONF in the target's environment (Debian's stripped
5.3 and bullseye's stripped 5.2.1 libraries, the stripped static _rjem_ build); with it off or
unknown nothing is checked and ::jemalloc says so. Live and as cores (the environment is read
from the initial stack either way)."""

from __future__ import annotations

import os

import pytest
from jemalloc_builds import (compile_bullseye, compile_debian, compile_dwarf, compile_rjem,
                             compile_symbols52)
from support import gcore, one_line_stderr, run_mdbpy, start_fixture

from mdbpy_commands.jemalloc.junk import conf_junk

BUILDS = {"dwarf": (lambda d: compile_dwarf("jemalloc_junk", d), "MALLOC_CONF"),
          "debian": (lambda d: compile_debian("jemalloc_junk", d), "MALLOC_CONF"),
          "rjemstripped": (lambda d: compile_rjem("jemalloc_junk", d, strip="all"),
                           "_RJEM_MALLOC_CONF"),
          "bullseye": (lambda d: compile_bullseye("jemalloc_junk", d), "MALLOC_CONF"),
          "symbols52": (lambda d: compile_symbols52("jemalloc_junk", d), "MALLOC_CONF")}
# how ::jemalloc says the fill is on, per build
ON = {"dwarf": "je_opt_junk_free = 1",
      "debian": "MALLOC_CONF junk:true in the environment; no internal symbols",
      "rjemstripped": "_RJEM_MALLOC_CONF junk:true in the environment; no internal symbols",
      "bullseye": "MALLOC_CONF junk:true in the environment; no internal symbols",
      "symbols52": "je_opt_junk_free = 1"}


@pytest.fixture(scope="module", params=list(BUILDS))
def junked(request, tmp_path_factory):
    """The fixture of each build run with junk:true: (build, running, exe, core)."""
    d = tmp_path_factory.mktemp("junk")
    compile_, var = BUILDS[request.param]
    exe = compile_(d)
    run = start_fixture(exe, env=dict(os.environ, **{var: "junk:true"}))
    try:
        yield request.param, run, exe, gcore(run.pid, d / "core")
    finally:
        run.stop()


def _problem(addr: str, size: int, off: int, n: int, first: int, where: str) -> list[str]:
    a = int(addr, 16)
    return ["BUG jemalloc: Junk overwritten",
            f"INFO: 0x{a + off:x}-0x{a + off + n - 1:x} @offset={off}. First byte "
            f"0x{first:x} instead of 0x5a",
            f"INFO: Object 0x{a:x} size {size}: freed ({where}); not junk: {n} of {size} bytes",
            ""]


@pytest.mark.parametrize("where", ["live", "core"])
def test_writes_after_free_exact(junked, where):
    build, run, exe, core = junked
    args = ("-p", run.pid) if where == "live" else (exe, core)
    r = run_mdbpy(*args, "-e", f"::jemalloc ! grep junk; ::heap_verify; "
                               f"{run.info['clean']}::whatis")
    assert one_line_stderr(r.stderr) == ""
    i = run.info
    assert r.stdout.splitlines() == [
        f"junk        free fill on ({ON[build]}): freed regions checked for 0x5a",
        *_problem(i["slab"], 96, 16, 8, 0x41, "free in its slab"),
        *_problem(i["cached"], 96, 40, 4, 0, "held by a tcache"),
        *_problem(i["large"], 20480, 100, 1, 0x42, "held by a tcache"),
        "jemalloc: 3 problems in 3 buffers",
        f"{i['clean']} is freed from jemalloc bin 96"]


@pytest.mark.parametrize("build, line", [
    ("dwarf", "free fill off (je_opt_junk_free = 0): freed regions not checked"),
    ("debian", "unknown (no internal symbols; MALLOC_CONF in the environment does not set "
               "junk): freed regions not checked"),
    ("symbols52", "free fill off (je_opt_junk_free = 0): freed regions not checked"),
    ("bullseye", "unknown (no internal symbols; MALLOC_CONF in the environment does not set "
                 "junk): freed regions not checked")])
def test_junk_off_nothing_checked(tmp_path, build, line):
    """Without junk:true the same writes after free are not reported (the regions hold no
    fill to check against), and ::jemalloc says why."""
    exe = BUILDS[build][0](tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.endswith("MALLOC_CONF")}
    run = start_fixture(exe, env=env)
    try:
        r = run_mdbpy("-p", run.pid, "-e", "::jemalloc ! grep junk; ::heap_verify")
    finally:
        run.stop()
    assert one_line_stderr(r.stderr) == ""
    assert r.stdout.splitlines() == [f"junk        {line}", "jemalloc: heap is clean"]


@pytest.mark.parametrize("conf, value", [
    ("junk:true", "true"), ("abort:false,junk:free", "free"),
    ("junk:alloc,junk:false", "false"),  # the last one wins, as jemalloc parses it
    ("narenas:4", None), ("junk", None), ("", None)])
def test_conf_junk(conf, value):
    assert conf_junk(conf) == value


@pytest.mark.parametrize("build", ["dwarf", "symbols52"])
def test_junk_on_a_busy_heap_is_clean(tmp_path, build):
    """fixtures/jemalloc_heap.c (about 3,000 freed regions: in slabs below regions still out,
    and held by two threads' tcaches) run with junk:true on 5.3 and 5.2.1: every checked region
    the program freed is all junk, so nothing is reported, and the leaks are as without junk."""
    exe = {"dwarf": compile_dwarf, "symbols52": compile_symbols52}[build]("jemalloc_heap",
                                                                          tmp_path)
    run = start_fixture(exe, env=dict(os.environ, MALLOC_CONF="junk:true"))
    try:
        r = run_mdbpy("-p", run.pid, "-e",
                      "::jemalloc ! grep junk; ::heap_verify; ::findleaks ! tail -1")
    finally:
        run.stop()
    assert one_line_stderr(r.stderr) == ""
    assert r.stdout.splitlines() == [f"junk        free fill on ({ON[build]}): freed regions "
                                     "checked for 0x5a",
                                     "jemalloc: heap is clean",
                                     "           Total      12 buffers, 95432 bytes"]
