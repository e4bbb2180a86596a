"""The per-thread cache walkers (umem_ptc_<size>) on a 2016 libumem heap with per-thread
caching, on one with it switched off and on the classic libumem that has none; and
::umem_debug's toggle and trace lines."""

from __future__ import annotations

from umem_synth import EXE_DATA, Run, SynthUmem, leaky_heap

from mdbpy_commands.umem import layouts as L

TP = EXE_DATA + 0x800  # the main thread's thread pointer (its tmem_t lies past it)
FAILED = "mdbpy: failed to perform walk: "


def ptc_heap(enabled: bool = True):
    """A non-debug 2016 libumem (per-thread caching needs UMEM_DEBUG unset): four buffers
    of umem_alloc_32, two of them on the main thread's per-thread list."""
    u = SynthUmem(version=L.ILLUMOS_2016, flags=0)
    u.standard_arenas()
    u.cache("umem_alloc_8", 8)
    u.cache("umem_alloc_16", 16)
    c32 = u.cache("umem_alloc_32", 32)
    bufs = [u.alloc(c32) for _ in range(4)]
    u.per_thread(c32, bufs[1:3], TP)
    if not enabled:
        u.m.u32(next(s.addr for s in u.lib_syms if s.name == "umem_ptc_enabled"), 0)
    return u, c32, bufs


def test_ptc_walkers_walk_every_thread_or_one():
    u, c32, bufs = ptc_heap()
    r = Run(u)
    assert r("::walk umem_ptc_32") == (f"{bufs[1]:#x}\n{bufs[2]:#x}\n", "")
    assert r(f"{TP:x}::walk umem_ptc_32") == (f"{bufs[1]:#x}\n{bufs[2]:#x}\n", "")
    assert r("::walk umem_ptc_16") == ("", f"{FAILED}umem_ptc_16: cache umem_alloc_16 is not "
                                           "cached per thread\n")
    # per-thread-cached buffers are free: out of the umem walk, in freemem
    assert r("::walk umem_alloc_32")[0].split() == sorted([f"{bufs[0]:#x}", f"{bufs[3]:#x}"])
    assert {f"{bufs[1]:#x}", f"{bufs[2]:#x}"} <= set(r(f"{c32.addr:x}::walk freemem")[0].split())
    row = next(x for x in r("::umastat")[0].splitlines() if x.startswith("umem_alloc_32 "))
    # buf size, in use (per-thread-cached buffers are free), in ptc, total (a slab of 4096
    # bytes ends in its umem_slab)
    assert row.split()[1:5] == ["32", "2", "2", str((4096 - 56) // 32)]
    walkers = r("::walkers")[0]
    assert "umem_ptc_8 " in walkers and "walk the per-thread cache for umem_alloc_32" in walkers


def test_ptc_walkers_say_why_there_is_nothing():
    u, _c32, _bufs = ptc_heap(enabled=False)
    assert Run(u)("::walk umem_ptc_32") == ("", (
        f"{FAILED}umem_ptc_32: per-thread caching is off in this process (umem_ptc_enabled is "
        "0: UMEM_DEBUG is set, or the library cannot generate its malloc on Linux)\n"))
    u, _t = leaky_heap()
    assert Run(u)("::walk umem_ptc_80") == ("", (
        f"{FAILED}umem_ptc_80: this libumem has no per-thread caches (portable libumem before "
        "UMF_PTC; mdb's Linux port has none either)\n"))


def test_umem_debug_toggles_the_trace():
    u, t = leaky_heap()
    r = Run(u)
    c80 = t["caches"]["umem_alloc_80"]
    assert r("::umem_debug") == ("umem: debugging is now on\n", "")
    out, _err = r(f"{c80.addr:x}::walk umem")
    live = "".join(f"{b:#x}\n" for b in sorted(t[k] for k in ("A", "B", "L3", "C1")))
    assert out == (
        f"umem debug: walking {c80.addr:x} (umem_alloc_80): 1 slabs, buf total is 36\n"
        "umem debug: slab freelists: 32 buffers\n"
        "umem debug: magazine layer: 0 buffers\n" + live)
    assert r("::umem_debug") == ("umem: debugging is now off\n", "")
    c32 = t["caches"]["umem_alloc_32"]
    assert r(f"{c32.addr:x}::walk umem") == (
        "".join(f"{b:#x}\n" for b in sorted(t[k] for k in ("L1", "L2", "S"))), "")
