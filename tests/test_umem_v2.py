"""libumem v2's per-CPU layers on a synthetic heap laid out through the v2 descriptors: each
cache's per-CPU depot lists and rseq caches hold free buffers (out of the umem walk, in
freemem, free for ::umastat, ::umem_verify and ::findleaks), and the arrays libumem maps for
them are its own memory, not mmap(2) leaks. With the library stripped of its statics the rseq
array's length falls back to umem_max_ncpus. (The real v2.4.0 tests cover the per-CPU depot
and per-thread caches: a real process leaves its rseq caches empty.)"""

from __future__ import annotations

import pytest
from umem_synth import BRK, PRIVATE, Run, SynthUmem, exe_pc, lib_pc

from mdbpy_commands.umem import layouts as L


def v2_heap():
    """A v2.1 heap: umem_alloc_32 with 4 live buffers (2 held by the program) and 7 + 3 + 2
    freed ones in CPU 1's depot list and CPU 0's rseq cache (loaded, previous)."""
    u = SynthUmem(version=L.V2_1)
    u.standard_arenas()
    c32 = u.cache("umem_alloc_32", 32, align=16)
    stack = [lib_pc("umem_cache_alloc"), lib_pc("malloc"), exe_pc("make_table")]
    live = [u.alloc(c32, 16, stack) for _ in range(4)]
    freed = [u.alloc(c32, 16, stack) for _ in range(12)]
    for b in freed:
        u.free(c32, b, "held", [lib_pc("umem_free")])
    arrays = u.cpu_layers(c32, [[], freed[:7]], [(freed[7:10], freed[10:]), ([], [])])
    u.root(0, live[0] + 16)
    u.root(8, live[1] + 16)
    return u, c32, live, freed, arrays


@pytest.mark.parametrize("stripped", [False, True], ids=["symbols", "stripped"])
def test_per_cpu_layers_hold_free_buffers(stripped):
    u, c32, live, freed, _arrays = v2_heap()
    r = Run(u, stripped=stripped)
    assert r(f"{c32.addr:x}::walk umem")[0].split() == [f"{b:#x}" for b in sorted(live)]
    assert set(freed) <= {int(x, 16) for x in r(f"{c32.addr:x}::walk freemem")[0].split()}
    row = next(x for x in r("::umastat")[0].splitlines() if x.startswith("umem_alloc_32 "))
    assert row.split()[1:3] == ["32", "4"]
    out, err = r("::findleaks; ::walk leakbuf")
    mmap = {int(x.split()[2], 16) for x in out.splitlines() if x.endswith(" MMAP")}
    assert mmap == {u.anon} and err == ""  # the synthetic heap's own unreferenced mapping
    leaked = {int(x, 16) for x in out.split() if x.startswith("0x")}
    assert leaked - {u.anon, BRK} == set(live[2:])
    assert r("::umem_verify")[0].splitlines()[1:] == [
        f"{'umem_alloc_32':<31s} {c32.addr:>16x} clean"]


def test_v2_layouts_and_release():
    """The release comes from the library's symbols (umem_depot_steal_max: v2.1 on), and
    ::layout lists v2's structs, bound from the builtin v2 descriptors."""
    u, _c32, _live, _freed, arrays = v2_heap()
    r = Run(u)
    rows = {x.split()[1]: x.split()[2:] for x in r("::layout")[0].splitlines()
            if x.startswith("umem ")}
    assert rows["umem_cache"] == ["0x3c0", "builtin", "x86_64", "v2026.7"]
    assert rows["umem_rseq_cache"][0] == "0x40" and rows["umem_ptc"][0] == "0x7b80"
    assert arrays == [PRIVATE, PRIVATE + 0x2000, PRIVATE + 0x4000]
    from mdbpy_commands.umem.state import Umem

    assert Umem.get(r.session).private_maps() == [
        (a, a + 0x1000) for a in arrays]
