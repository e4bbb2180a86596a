"""The umem dcmds on a stripped libumem: only .dynsym left, so no static symbol (umem_cpus,
vmem_list, umem_alloc_table, heap_arena, ...).

What the dynamic symbols give (umem_null_cache, umem_ready, umem_flags, the logs) is enough for
the caches, their buffers, the logs and verify; the arenas are found from the caches' arenas
(vmem_list's head is the root of their vm_source ancestry), so ::vmem and ::findleaks work too.
What only a static symbol holds (the umem_cpu array) fails with state.py's one-line message.

In CI on the synthetic heap (tests/umem_synth.py, its local symbols dropped), and on a
`strip`ped copy of every real build in ../shared/umem/ (tests/umem_builds.py): without DWARF,
its structures are read through the builtin descriptors of the release its dynamic symbols
name (v2.4.0's differ from the 2010 tree's).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from support import gcore, run_mdbpy
from test_umem_real import PROGRAM
from umem_builds import build_params, compile_c, hexes, start
from umem_synth import Run, leaky_heap

from mdbpy_commands.umem.state import Umem

STRIPPED = ("a static symbol: the library is stripped; use an unstripped libumem or install "
            "its debug file")
NO_UMEM_CPUS = f"libumem.so.0 has no symbol umem_cpus ({STRIPPED})"
NO_VMEM_LIST = f"libumem.so.0 has no symbol vmem_list ({STRIPPED})"

# everything these print comes from dynamic symbols and the structures they lead to
SAME_OUTPUT = ("::umem_status", "::umem_cache", "::umastat", "::umem_verify", "::umem_log",
               "::umalog", "::walk umem_alloc_80", "::walk freemem", "::vmem", "::walk vmem",
               "::umem_malloc_info", "::umem_malloc_dist -b 4", "::findleaks -d",
               "::walk leakbuf", "::walk umem_alloc_80 | ::whatis")


@pytest.fixture(scope="module")
def heap():
    u, t = leaky_heap()
    return u, t, Run(u), Run(u, stripped=True)


def test_the_stripped_session_has_no_static_symbols(heap):
    _u, _t, full, stripped = heap
    for name in ("umem_cpus", "vmem_list", "umem_alloc_table", "heap_arena", "umem_magtype"):
        assert Umem.get(full.session).sym(name) is not None
        assert Umem.get(stripped.session).sym(name) is None
    assert Umem.get(stripped.session).sym("umem_null_cache") is not None


@pytest.mark.parametrize("cmd", SAME_OUTPUT)
def test_dynamic_symbols_suffice(heap, cmd):
    _u, _t, full, stripped = heap
    want = full(cmd)
    assert want[0]
    assert stripped(cmd) == want


def test_findleaks_finds_the_same_leaks(heap):
    _u, t, _full, stripped = heap
    stripped("::findleaks -f")
    leaks = {int(x, 16) for x in stripped("::walk leakbuf")[0].split()}
    assert {t["L1"], t["L2"], t["L3"], t["O1"]} <= leaks
    assert not {t["A"], t["B"], t["C1"], t["S"], t["R"], t["P2"], t["O2"]} & leaks


def test_a_static_symbol_is_needed(heap):
    _u, _t, _full, stripped = heap
    assert stripped("::walk umem_cpu") == ("", f"mdbpy: failed to perform walk: {NO_UMEM_CPUS}\n")


def test_no_arena_root_without_vmem_list():
    """When the first cache's arena is unreadable there is no sound vmem_list head: the vmem
    commands fail with the stripped-library message, the cache commands still work."""
    u, _t = leaky_heap()
    first = u.caches[0].addr
    u.m.u64(first + u.layouts["umem_cache"].offset("cache_arena"), 0xDEAD0000)
    stripped = Run(u, stripped=True)
    assert stripped("::vmem") == ("", f"mdbpy: {NO_VMEM_LIST}\n")
    assert stripped("::walk vmem") == ("", f"mdbpy: failed to perform walk: {NO_VMEM_LIST}\n")
    out, err = stripped("::umem_cache")
    assert err == "" and f"{first:016x} umem_alloc_16 " in out


# -- the real library, stripped ------------------------------------------------------------
@pytest.fixture(scope="module", params=build_params())
def stripped_proc(request, tmp_path_factory):
    """The real-library test program on `strip`ped copies of the build's libraries (found
    beside each other through libumem_malloc's RUNPATH $ORIGIN), with its own symbol cache:
    the cache is keyed by build-id, which strip keeps, so a cache filled from the unstripped
    library would give back its static symbols."""
    build = request.param
    d = tmp_path_factory.mktemp("umem_stripped")
    for lib in (build.shared(), build.shared("libumem_malloc")):
        subprocess.run(["strip", "-o", str(d / lib.name), str(lib)], check=True)
    name = build.shared().name
    assert subprocess.run(["nm", str(d / name)], capture_output=True, text=True).stdout == ""
    src = d / "umemprog.c"
    src.write_text(PROGRAM)
    r = start(compile_c(src, d / "umemprog"), preload=d / build.malloc.name)
    cache = d / "symcache"
    old = os.environ.get("MDBPY_CACHE_DIR")
    os.environ["MDBPY_CACHE_DIR"] = str(cache)
    try:
        with open(f"/proc/{r.pid}/maps") as f:
            assert f"{d}/{name}" in f.read()
        yield name, build.defines("umem_cpus"), r, gcore(r.pid, d / "umemprog-core")
    finally:
        r.stop()
        if old is not None:
            os.environ["MDBPY_CACHE_DIR"] = old
        shutil.rmtree(cache, ignore_errors=True)


def mdb(target, cmds: str):
    p = run_mdbpy(*target, "-e", cmds)
    return p.returncode, p.stdout, p.stderr


def test_stripped_real_library(stripped_proc):
    name, exported, r, core = stripped_proc
    for t in (("-p", r.pid), (core,)):
        rc, out, _err = mdb(t, "::umem_status; ::umem_cache; ::vmem")
        assert rc == 0 and out.startswith("Status:\t\tready and active\nConcurrency:\t")
        assert " umem_alloc_80  " in out and " umem_bufctl_audit_cache " in out
        assert "   mmap_heap " in out and "     umem_oversize " in out
        rc, out, _err = mdb(t, "::walk umem_alloc_64")
        assert r.addr("head") - 16 in hexes(out) and len(out.split()) == 5
        rc, out, _err = mdb(t, "::findleaks -f; ::walk leakbuf")
        assert " MMAP" not in out
        assert hexes(out) == {r.addr("leak") - 16, r.addr("big") - 16, r.addr("mid") - 16}
        rc, out, _err = mdb(t, "::umem_verify")
        assert [x.split()[0] for x in out.splitlines()[1:] if not x.endswith(" clean")] == [
            "umem_alloc_80"]
        rc, out, err = mdb(t, "::walk umem_cpu")
        if exported:  # v2 exports umem_cpus: the walk needs no static symbol there
            assert rc == 0 and len(out.split()) >= 1
        else:
            assert (rc, out, err.splitlines()[-1]) == (1, "", (
                f"mdbpy: failed to perform walk: {name} has no symbol umem_cpus ({STRIPPED})"))
