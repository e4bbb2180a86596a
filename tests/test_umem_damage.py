"""The umem walkers on damaged synthetic heaps: each break is reported once with where it is,
the walks go on with what they can still trust, and ::findleaks and ::umem_verify finish with
exactly the results of the undamaged heap (and name the regions they could not trust)."""

from __future__ import annotations

import pytest
import umem_synth
from umem_synth import HEAP, leaky_heap

from mdbpy.heap.leaks import find_leaks
from mdbpy_commands.umem import layouts as L

WILD = 0xDEAD0000  # unmapped


def heap():
    """leaky_heap plus a non-hash cache of 40 live buffers over three slabs, every one held
    by the program's data; two freed to make a freelist in the first slab."""
    u, t = leaky_heap()
    nodes = u.cache("nodes", 256, flags=0)
    t["N"] = [u.alloc(nodes) for _ in range(40)]
    for k, b in enumerate(t["N"]):
        u.root(0x100 + 8 * k, b)
    u.free(nodes, t["N"][1])
    u.free(nodes, t["N"][2])
    u.root(0x100 + 8, 0)
    u.root(0x100 + 16, 0)
    t["caches"]["nodes"] = nodes
    return u, t


class Run(umem_synth.Run):
    def leaks(self):
        report = find_leaks(self.session)
        return sorted(m.addr for m in report.leaks), report.warnings


@pytest.fixture(scope="module")
def baseline():
    u, _t = heap()
    r = Run(u)
    leaks, warnings = r.leaks()
    assert warnings == []
    return {"leaks": leaks, "verify": r("::umem_verify")[0],
            "caches": r("::walk umem_cache")[0]}


def assert_exact(r, baseline, regions) -> None:
    """::findleaks and ::umem_verify give the undamaged heap's results, and findleaks names
    exactly `regions` ([start, end, why]) as not trusted."""
    leaks, warnings = r.leaks()
    assert leaks == baseline["leaks"]
    assert warnings == [f"[{a:x}, {b:x}) not trusted: {why}" for a, b, why in regions]
    assert r("::umem_verify")[0] == baseline["verify"]


def off(u, struct, name):
    return u.layouts[struct].offset(name)


def test_smashed_slab_pointer_is_reported_and_recovered(baseline):
    u, t = heap()
    nodes = t["caches"]["nodes"]
    s1, s2, s3 = (sp for sp, _b, _n in nodes.slabs)
    u.m.u64(s2 + off(u, "umem_slab", "slab_next"), WILD)
    r = Run(u)
    out, err = r(f"{nodes.addr:x}::walk umem_slab")
    assert out.split() == [f"{s:#x}" for s in (s1, s2, s3)]
    why = f"cache 0x{nodes.addr:x} slab list: unreadable slab 0x{WILD:x} (linked from 0x{s2:x})"
    assert err == f"mdbpy: umem: {why}\n"
    assert_exact(r, baseline, [(s2, s2 + 56, why)])


def test_lost_slab_is_named_and_the_rest_is_exact(baseline):
    """A slab whose both links are smashed is lost; its buffers are not judged, the rest is."""
    u, t = heap()
    nodes = t["caches"]["nodes"]
    s1, s2, s3 = (sp for sp, _b, _n in nodes.slabs)
    u.m.u64(s2 + off(u, "umem_slab", "slab_next"), HEAP + 8)
    u.m.u64(s2 + off(u, "umem_slab", "slab_prev"), HEAP + 8)
    r = Run(u)
    out, err = r(f"{nodes.addr:x}::walk umem_slab")
    assert out.split() == [f"{s1:#x}", f"{s3:#x}"]
    what = f"mdbpy: umem: cache 0x{nodes.addr:x} slab list: slab 0x{s2:x}"
    assert err == (f"{what} does not link back to 0x{s1:x}\n"
                   f"{what} does not link back to 0x{s3:x}\n")
    lost = {b for b in t["N"] if s2 > b >= s2 - 4096}
    assert len(lost) == 15
    leaks, warnings = r.leaks()
    assert leaks == baseline["leaks"] and len(warnings) == 2


def test_freelist_cycle(baseline):
    u, t = heap()
    nodes = t["caches"]["nodes"]
    b1, b2 = t["N"][1], t["N"][2]
    ctl1, ctl2 = b1 + nodes.bufctl_off, b2 + nodes.bufctl_off
    assert u.m.get64(ctl2) == ctl1 and u.m.get64(ctl1) == 0
    free0 = Run(u)(f"{nodes.addr:x}::walk freemem")[0]
    assert {f"{b1:#x}", f"{b2:#x}"} <= set(free0.split())
    u.m.u64(ctl1, ctl2)  # b1's free link points back at b2: a double free's cycle
    r = Run(u)
    free, err = r(f"{nodes.addr:x}::walk freemem")
    assert free == free0
    s1, base, n = nodes.slabs[0]
    why = f"cache 0x{nodes.addr:x} slab 0x{s1:x} freelist: cycle at 0x{ctl2:x}"
    assert err == f"mdbpy: umem: {why}\n"
    assert_exact(r, baseline, [(base, base + 256 * n, why)])


def test_wild_bufctls(baseline):
    """A wild pointer heading a slab freelist: the slab's buffers are classified by their
    buftags. In another cache a buftag names the wrong bufctl (consistently, so verify has
    nothing to say), which sends the walk to the hash chains, where a wild bucket is cut."""
    u, t = heap()
    c80, c32 = t["caches"]["umem_alloc_80"], t["caches"]["umem_alloc_32"]
    slab80 = c80.slabs[0][0]
    u.m.u64(slab80 + off(u, "umem_slab", "slab_head"), HEAP + 0x10)
    other = c32.bufctl[t["L2"]]
    u.m.put("umem_buftag", t["L1"] + c32.buftag_off, bt_bufctl=other,
            bt_bxstat=other ^ L.UMEM_BUFTAG_ALLOC)
    table = u._cget(c32, "cache_hash_table")
    empty = next(k for k in range(64) if not u.m.get64(table + 8 * k))
    u.m.u64(table + 8 * empty, WILD)
    r = Run(u)
    _out, err = r("::walk umem")
    bucket = (table + 8 * empty, table + 8 * empty + 8,
              f"cache 0x{c32.addr:x} hash bucket {empty}: wild bufctl 0x{WILD:x}")
    base = c80.slabs[0][1]
    slab = (base, base + 36 * 112,
            f"cache 0x{c80.addr:x} slab 0x{slab80:x} freelist: wild bufctl 0x{HEAP + 0x10:x}")
    assert err == f"mdbpy: umem: {bucket[2]}\nmdbpy: umem: {slab[2]}\n"
    assert set(r("::walk umem_alloc_80")[0].split()) == {
        f"{t[k]:#x}" for k in ("A", "B", "L3", "C1")}
    assert_exact(r, baseline, [bucket, slab])


def test_cyclic_cache_list(baseline):
    u, t = heap()
    cs = [c.addr for c in u.caches]
    u.m.u64(cs[-1] + off(u, "umem_cache", "cache_next"), cs[1])
    r = Run(u)
    out, err = r("::walk umem_cache")
    assert out == baseline["caches"]
    why = f"cache list: cycle at 0x{cs[1]:x}"
    assert err == f"mdbpy: umem: {why}\n"
    assert_exact(r, baseline, [(cs[-1], cs[-1] + 696, why)])


def test_vmem_segment_ring_and_depot_cycles():
    u, t = heap()
    over = u.arenas["umem_oversize"]
    c16 = t["caches"]["umem_alloc_16"]
    r0 = Run(u)
    segs = r0(f"{over:x}::walk vmem_seg")[0].split()
    assert len(segs) == 4  # two spans and their allocations; the vm_seg0 anchor is not one
    free16 = r0(f"{c16.addr:x}::walk freemem")[0]
    u.m.u64(int(segs[1], 16) + off(u, "vmem_seg", "vs_anext"), int(segs[0], 16))
    mag = u.m.get64(c16.addr + off(u, "umem_cache", "cache_full"))
    u.m.u64(mag, mag)  # the depot's only full magazine links to itself
    r = Run(u)
    out, err = r(f"{over:x}::walk vmem_seg")
    assert out.split() == segs
    assert err == f"mdbpy: umem: arena 0x{over:x} segment list: cycle at {segs[0]}\n"
    out, err = r(f"{c16.addr:x}::walk freemem")
    assert out == free16
    assert err == f"mdbpy: umem: cache 0x{c16.addr:x} depot: cycle at 0x{mag:x}\n"
