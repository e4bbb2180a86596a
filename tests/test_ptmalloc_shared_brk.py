"""glibc's malloc sharing the program break with jemalloc (`dss:primary`: jemalloc's extents
come from sbrk), so that both allocators' memory is in [heap]. glibc's accounting
(mp_.sbrk_base + main_arena.system_mem) ends its heap at its top chunk's end, and the brk
memory it did not obtain is jemalloc's: ::heap_verify is clean, nothing is warned of, and
::findleaks reports exactly the planted leaks of both allocators; live, on a gcore core and
on a core of mdbpy's own writer (::gcore), through libc's symbols and by the heuristics.

Two programs: fixtures/glibc_jemalloc_dss.c (jemalloc static under the `_rjem_` prefix: a
jemalloc extent before mp_.sbrk_base, one between glibc's two runs of chunks, one past glibc's
top up to the end of [heap]), and fixtures/jemalloc_mixed.c with Debian's stripped
libjemalloc2 dlopen()ed under MALLOC_CONF=dss:primary (glibc's heap first, jemalloc's extents
past its top). A top chunk whose size was smashed to end short (by two pages, or by less than
one) is still damage, reported against the end glibc's counters give, the jemalloc memory past
it not blamed. Every
address is one the fixture printed of itself."""

from __future__ import annotations

import os

import pytest
from jemalloc_builds import CI_BUILD, DEBIAN_LIB
from support import compile_fixture, gcore, proc_maps, run_mdbpy, start_fixture

# (where the heap is looked at, how glibc's state is found)
WAYS = (("live", "symbols"), ("gcore", "symbols"), ("mdbpy", "symbols"),
        ("gcore", "heuristic"), ("live", "heuristic"))
COMMANDS = ("::heaps", "::heap_verify", "::findleaks", "::ptmalloc_verify")
MARK = "@@cmd"


@pytest.fixture(scope="module")
def programs(build_dir):
    """name -> (argv, env) of each program; a build that is absent skips, naming it."""
    b = CI_BUILD / "rjem"
    if not (b / "done").exists():
        pytest.skip(f"{b} not built (run .ci/build-jemalloc)")
    if not DEBIAN_LIB.exists():
        pytest.skip("Debian's libjemalloc2 is not installed")
    rjem = compile_fixture("glibc_jemalloc_dss", build_dir,
                           flags=("-g", "-O0", f"-I{b / 'include'}"),
                           libs=(str(b / "lib" / "libjemalloc_pic.a"), "-pthread", "-lm",
                                 "-ldl"))
    mixed = compile_fixture("jemalloc_mixed", build_dir, libs=("-ldl",))
    env = dict(os.environ, MALLOC_CONF="dss:primary",
               GLIBC_TUNABLES="glibc.rtld.optional_static_tls=65536")
    return {"rjem": ((rjem,), None), "debian": ((mixed, DEBIAN_LIB), env)}


def look(program, tmp_path, where: str, locate: str, *args):
    """(the fixture's facts, [heap]'s (start, end), each command's output lines, stderr
    lines) of a program looked at live or as a core, through symbols or the heuristics."""
    argv, env = program
    run = start_fixture(*argv, *args, env=env)
    try:
        (brk,) = [(a, b) for a, b, _p, _o, path in proc_maps(run.pid) if path == "[heap]"]
        if where == "live":
            target = ("-p", run.pid)
        elif where == "gcore":
            target = (argv[0], gcore(run.pid, tmp_path / "core"))
        else:
            prefix = tmp_path / "own"
            w = run_mdbpy("-p", run.pid, "-e", f"::gcore -o {prefix}")
            assert (w.stdout, w.stderr) == (f"{prefix}.{run.pid} dumped\n", "")
            target = (argv[0], f"{prefix}.{run.pid}")
        how = ({"MDBPY_SYSTEM_DEBUG_DIRS": "", "MDBPY_CACHE_DIR": str(tmp_path / "cache"),
                "MDBPY_PTMALLOC_LOCATE": "auto"} if locate == "heuristic" else
               {"MDBPY_PTMALLOC_LOCATE": "symbols"})
        script = "; ".join(f"::echo {MARK}; {c}" for c in COMMANDS)
        r = run_mdbpy(*target, "-e", script, env=how)
    finally:
        run.stop()
    parts: list[list[str]] = []
    for line in r.stdout.splitlines():
        if line.rstrip() == MARK:  # ::echo's line ends in a blank
            parts.append([])
        else:
            assert parts, r.stdout
            parts[-1].append(line)
    assert len(parts) == len(COMMANDS), r.stdout + r.stderr
    return run.info, brk, dict(zip(COMMANDS, parts)), r.stderr.splitlines()


def _leaked(lines: list[str]) -> set[int]:
    """The BUFFER column of ::findleaks' rows."""
    rows = [ln.split() for ln in lines]
    return {int(r[2], 16) for r in rows if len(r) == 4 and r[1] == "1" and len(r[0]) == 16}


def _planted(info) -> list[int]:
    return [int(a, 16) for a in info["leaks"].split(",")]


@pytest.mark.parametrize("where,locate", WAYS)
@pytest.mark.parametrize("name", ["rjem", "debian"])
def test_shared_brk_is_clean_and_leaks_exact(programs, tmp_path, name, where, locate):
    info, brk, out, err = look(programs[name], tmp_path, where, locate)
    (heap,) = [[int(w, 16) for w in ln.split()[2:]] for ln in out["::heaps"][1:]]
    # the shape under test: the main heap ends (its top chunk ends) inside [heap], jemalloc's
    # memory past it up to the end of [heap]; rjem's also before sbrk_base, and in a 4 MiB
    # extent between glibc's runs (glibc's second leak is past it)
    g1, j1, g2, j2 = _planted(info)
    assert brk[0] <= heap[0] < g1 < g2 < heap[1] < brk[1]
    if name == "rjem":
        assert int(info["top_end"], 16) == int(info["glibc_end"], 16) == heap[1]
        assert j1 < heap[0] and g2 - g1 > (4 << 20) and heap[1] + (8 << 20) < brk[1]
    else:
        assert heap[0] == brk[0] and heap[1] < j1
    assert err == []
    assert out["::heap_verify"] == ["jemalloc: heap is clean", "ptmalloc: heap is clean"]
    assert out["::ptmalloc_verify"] == ["ptmalloc: heap clean"]
    assert _leaked(out["::findleaks"]) == {g1, j1, g2, j2}
    total = "232560" if name == "rjem" else "87552"
    assert out["::findleaks"][-1] == f"           Total       4 buffers, {total} bytes"


@pytest.mark.parametrize("where,locate", WAYS)
@pytest.mark.parametrize("cut", [0x2000, 0x100])
def test_smashed_top_is_still_damage(programs, tmp_path, cut, where, locate):
    """The top's size made smaller by two pages, or by less than one (the top must end
    exactly where glibc's counters end the heap, not merely within a page of it): it ends
    short of that end, and exactly the bytes cut off are not trusted; jemalloc's memory past
    it is not blamed, and the leaks of both allocators stay exact."""
    info, _brk, out, err = look(programs["rjem"], tmp_path, where, locate, "smashtop",
                                f"{cut:x}")
    top, short, end = (int(info[k], 16) for k in ("top", "smashed_end", "glibc_end"))
    arena = int(out["::heaps"][1].split()[0], 16)
    what = (f"arena 0x{arena:x} top chunk 0x{top:x}: ends at 0x{short:x}, short of the heap "
            f"end 0x{end:x}; the rest is not walked")
    assert short == end - cut
    assert err == [f"mdbpy: ptmalloc: {what}",
                   f"mdbpy: findleaks: [{short:x}, {end:x}) not trusted: {what}"]
    assert out["::heap_verify"] == ["jemalloc: heap is clean", f"BUG ptmalloc: {what}",
                                    f"INFO: Object 0x{top:x}", "",
                                    "ptmalloc: 1 problem in 1 buffer"]
    assert out["::ptmalloc_verify"] == [f"0x{top:x}: {what}"]
    assert _leaked(out["::findleaks"]) == set(_planted(info))
