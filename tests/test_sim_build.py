"""Built heaps, checked byte for byte through the sim layout descriptors, and the written
program + core opened by mdbpy's CLI and by gdb."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mdbpy.session import Session
from mdbpy.sim import layouts as L
from mdbpy.sim.build import build, write
from mdbpy.sim.slub import bind
from support import run_mdbpy

DEMO = (Path(__file__).resolve().parents[1] / "mdbpy" / "sim" / "demo.scn").read_text()
B = bind()


@pytest.fixture(scope="module")
def demo():
    r = build(DEMO)
    s = Session(r.target, out=open("/dev/null", "w"))
    r.add_symbols(s)
    return r, s


def caches(s):
    root = B["sim_allocator"].view(s.mem, s.symbols.lookup("sim_allocator").addr)
    out, c = {}, root.caches
    while c:
        v = B["sim_kmem_cache"].view(s.mem, c)
        out[v.cstr("name")] = v
        c = v.next
    return root, out


def slabs(s, cache):
    out, a = [], cache.slabs
    while a:
        out.append(B["sim_slab"].view(s.mem, a))
        a = out[-1].next
    return out


def freelist(s, cache, slab):
    """The slab's free list up to its end or its first repeated object."""
    out, o = [], slab.freelist
    while o and o not in out:
        out.append(o)
        o = s.mem.read_u64(o + cache.offset)
    return out


def track(s, cache, obj, which):
    t = B["sim_track"].view(s.mem, obj + cache.track_offset + (which == "free") *
                            B["sim_track"].size)
    pcs = list(t.addrs)
    return [s.format_addr(pc) for pc in pcs[:pcs.index(0)]], t.pid, t.cpu, t.when


def live_objects(s, r):
    """The demo's allocated objects, found the way the program reaches them."""
    nodes = []
    n = s.mem.read_u64(r.globals["config_list"])
    while n:
        nodes.append(n)
        n = s.mem.read_u64(n)
    names = [s.mem.read_u64(n + 8) for n in nodes]
    leak = r.truth["leaks"][0]["address"]
    return nodes, names, {*nodes, *names, leak, r.names["conn"], r.names["keep"]}


def test_allocator_root_and_cache_geometry(demo):
    r, s = demo
    root, cs = caches(s)
    assert root.magic == L.SIM_MAGIC and root.version == 1 and root.cpus == 2
    assert list(cs)[:13] == [f"kmalloc-{n}" for n in
                             (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)]
    assert list(cs)[13:] == ["session"] and root.ncaches == 14
    k16 = cs["kmalloc-16"]
    # 8 left red zone + 16 object + 8 right red zone + 8 free pointer + 2 tracks + 8 padding
    assert (k16.red_left_pad, k16.object_size, k16.inuse, k16.offset, k16.track_offset) == (
        8, 16, 24, 24, 32)
    assert k16.size == 8 + 32 + 2 * 144 + 8 == 336 and k16.slab_size == 8192
    assert k16.objects_per_slab == 24 and k16.debug == (L.SIM_RED_ZONE | L.SIM_POISON |
                                                        L.SIM_STORE_USER)
    for name, c in cs.items():
        ss = slabs(s, c)
        assert c.nr_slabs == len(ss) == r.truth["caches"].get(name, {}).get("slabs", 0)
        for sl in ss:
            assert root.slab_area <= sl.base < sl.base + c.slab_size <= root.slab_area_end
            assert root.metadata <= sl.addr < root.metadata_end and sl.cache == c.addr
    assert root.metadata <= root.caches < root.metadata_end


def scan_slots(s, double_freed: int | None):
    """Every slot of every cache checked against what slub_debug writes: (damaged (object,
    kind) pairs, allocated objects). Free lists must hold each free object exactly once, but for
    the one a double free cut."""
    _, cs = caches(s)
    live, bad = set(), []
    for name, c in cs.items():
        for sl in slabs(s, c):
            free = freelist(s, c, sl)
            if double_freed in free:
                # freed twice in a row: its free pointer points at itself, and the slab's
                # other free objects are cut off the list (here: all of them)
                assert free == [double_freed] and sl.inuse == 0
                assert s.mem.read_u64(double_freed + c.offset) == double_freed
                free = [sl.base + i * c.size + c.red_left_pad for i in range(sl.objects)]
            assert len(free) == len(set(free)) == sl.objects - sl.inuse
            for i in range(sl.objects):
                slot = sl.base + i * c.size
                obj = slot + c.red_left_pad
                raw = s.mem.read(slot, c.size)
                o = c.red_left_pad
                allocated = obj not in free
                red = L.SIM_REDZONE_ACTIVE if allocated else L.SIM_REDZONE_INACTIVE
                areas = {"redzone": raw[:o] + raw[o + c.object_size:o + c.inuse],
                         "padding": raw[o + c.track_offset + 2 * 144:]}
                want = {"redzone": bytes([red]) * (o + c.inuse - c.object_size),
                        "padding": b"\x5a" * (c.size - o - c.track_offset - 288)}
                if not allocated:
                    areas["poison"] = raw[o:o + c.object_size]
                    want["poison"] = b"\x6b" * (c.object_size - 1) + b"\xa5"
                else:
                    live.add(obj)
                for kind in areas:
                    if areas[kind] != want[kind]:
                        bad.append((obj, kind))
            tail = s.mem.read(sl.base + sl.objects * c.size, c.slab_size - sl.objects * c.size)
            assert tail == b"\x5a" * len(tail)
    return bad, live


def test_every_slot_byte_for_byte(demo):
    r, s = demo
    bad, live = scan_slots(s, r.names["req"])
    assert live == live_objects(s, r)[2]
    truth = [(c["address"], c["kind"]) for c in r.truth["corrupt"]]
    assert sorted(bad) == sorted(k for k in truth if k[1] != "double free")


def test_planted_bugs_in_truth(demo):
    r, s = demo
    nodes, names, _ = live_objects(s, r)
    (leak,) = r.truth["leaks"]
    assert leak == {"address": leak["address"], "cache": "kmalloc-128", "size": 128,
                    "name": "line", "thread": "main",
                    "alloc_stack": ["parse_line", "load_config", "main", "_start"]}
    by_kind = {c["kind"]: c for c in r.truth["corrupt"]}
    assert sorted(by_kind) == ["double free", "poison", "redzone"]
    over = by_kind["redzone"]
    assert over["address"] == names[1] and over["first_bad"] == names[1] + 16
    assert s.mem.read(names[1], 24) == b"listen-address-v6\0" + b"\xcc" * 6
    uaf = by_kind["poison"]
    assert uaf["address"] == r.names["s"] and uaf["first_bad"] == r.names["s"] + 16
    assert uaf["write_stack"] == ["log_session", "worker_loop", "start_thread"]
    assert s.mem.read(uaf["first_bad"] - 2, 8) == b"\x6b\x6b\x01\x00\x00\x00\x6b\x6b"
    df = by_kind["double free"]
    assert df["address"] == r.names["req"] and df["cache"] == "kmalloc-256"
    assert df["first_free_stack"] == ["handle_request", "worker_loop", "start_thread"]
    assert df["free_stack"] == ["cleanup", "handle_request", "worker_loop", "start_thread"]
    assert r.truth["caches"]["kmalloc-16"] == {"slabs": 1, "objects": 24, "allocated": 3,
                                               "free": 21, "leaked": 0, "corrupt": 1}


def test_tracks_hold_return_addresses(demo):
    r, s = demo
    _, cs = caches(s)
    line = r.truth["leaks"][0]["address"]
    stack, pid, cpu, when = track(s, cs["kmalloc-128"], line, "alloc")
    assert stack == ["parse_line+0x9", "load_config+0x13", "main+0x9", "_start+0x9"]
    assert (pid, cpu) == (4242, 0)
    assert track(s, cs["kmalloc-128"], line, "free")[0] == []
    req = r.names["req"]
    stack, pid, cpu, when2 = track(s, cs["kmalloc-256"], req, "free")
    assert stack == ["cleanup+0x9", "handle_request+0x13", "worker_loop+0x18",
                     "start_thread+0x9"]
    assert (pid, cpu) == (4243, 1) and when2 > when
    # every return address follows a real call: e8 rel32 to the allocator's entry point
    pc = s.symbols.lookup("parse_line").addr + 9
    call = s.mem.read(pc - 5, 5)
    assert call[0] == 0xE8
    assert pc + int.from_bytes(call[1:], "little", signed=True) == \
        s.symbols.lookup("kmalloc").addr


def test_threads_and_frames(demo):
    r, s = demo
    main, worker = r.target.threads()
    assert (main.tid, worker.tid) == (4242, 4243)
    assert s.format_addr(main.regs["rip"]) == "serve+0x4"
    assert s.format_addr(worker.regs["rip"]) == "worker_loop+0x4"
    # main's frame chain: serve -> main -> _start, return addresses at rbp+8
    rbp, callers = main.regs["rbp"], []
    while rbp:
        callers.append(s.format_addr(s.mem.read_u64(rbp + 8)))
        rbp = s.mem.read_u64(rbp)
    assert callers == ["main+0xe", "_start+0x9", "0x0"]
    # `conn` lives only in serve's stack slot: a root
    assert s.mem.read_u64(main.regs["rbp"] - 8) == r.names["conn"]
    assert main.regs["rsp"] <= main.regs["rbp"] - 8


@pytest.fixture(scope="module")
def written(demo, tmp_path_factory):
    return write(demo[0], str(tmp_path_factory.mktemp("sim")))


def test_written_files_open_in_mdbpy(demo, written):
    r, _ = demo
    prog, core, truth = written
    assert json.loads(Path(truth).read_text()) == json.loads(json.dumps(r.truth))
    res = run_mdbpy("-S", prog, core, "-e",
                    "::status; ::threads; ::nm; *config_list::walk list; ::stacks")
    assert res.returncode == 0 and res.stderr == ""
    out = res.stdout.splitlines()
    assert out[:5] == [f"debugging core file of confsrv (64-bit) from {core}",
                       f"file: {prog}", f"initial argv: {prog}",
                       "threading model: native threads",
                       "status: process core file generated with gcore(1)"]
    assert [line.split()[-1] for line in out[6:8]] == ["serve+0x4", "worker_loop+0x4"]
    nm = {line.split("|")[-1]: line for line in out if line.count("|") == 6}
    alloc = r.globals["sim_allocator"]
    assert nm["sim_allocator"].startswith(f"0x{alloc:016x}|0x0000000000000048|OBJT |GLOB ")
    assert nm["kmalloc"].split("|")[2].strip() == "FUNC"
    nodes, _, _ = live_objects(demo[1], r)
    i = out.index(f"0x{nodes[0]:x}")
    assert out[i:i + 3] == [f"0x{n:x}" for n in nodes]
    assert out[i + 3:] == ["THREAD 4242", "serve+0x4()", "main+0xe()", "_start+0x9()", "",
                           "THREAD 4243", "worker_loop+0x4()", "start_thread+0x9()", ""]


def test_gdb_opens_the_core(written):
    prog, core, _ = written
    res = subprocess.run(["gdb", "-nx", "-batch", prog, core, "-ex", "info threads",
                          "-ex", "bt"], capture_output=True, text=True, timeout=60)
    assert "LWP 4242" in res.stdout and "LWP 4243" in res.stdout
    assert "in serve ()" in res.stdout and "in worker_loop ()" in res.stdout
    assert "#1  0x" in res.stdout and "in main ()" in res.stdout


def test_generator_sizes_leaks_and_shapes():
    from mdbpy.sim.generate import generate

    r = generate(10_000, 0.02, seed=5, list_len=1500, tree_nodes=700, fanout=64, check=True)
    counts = r.truth["caches"]
    assert sum(c["allocated"] for c in counts.values()) == 10_000
    assert len(r.truth["leaks"]) == 200 == counts["kmalloc-64"]["leaked"]
    assert counts["kmalloc-32"]["allocated"] == 1500 and counts["tree_node"]["allocated"] == 700
    # 7600 items and arrays: ceil(7600 / 65) arrays of 64 pointers
    assert counts["kmalloc-512"]["allocated"] == 117
    assert counts["kmalloc-64"]["allocated"] == 7600 - 117 + 200
    s = Session(r.target, out=open("/dev/null", "w"))
    r.add_symbols(s)
    bad, live = scan_slots(s, None)
    assert bad == [] and len(live) == 10_000
    n, seen = s.mem.read_u64(r.globals["list_head"]), 0
    while n:
        seen += 1
        n = s.mem.read_u64(n)
    assert seen == 1500
    _, cs = caches(s)
    leak = r.truth["leaks"][0]["address"]
    stack = track(s, cs["kmalloc-64"], leak, "alloc")[0]
    assert stack == ["parse_header+0x9", "handle_request+0x9", "main+0x18", "_start+0x9"]
    # the same seed builds the same heap
    again = generate(10_000, 0.02, seed=5, list_len=1500, tree_nodes=700, fanout=64)
    assert again.truth == r.truth
    assert [again.target.read(m.start, m.size) for m in again.target.mappings()] == [
        r.target.read(m.start, m.size) for m in r.target.mappings()]


def test_leak_kinds_and_underflows():
    r = build("""
global keep
call main
a = kmalloc 64
a = kmalloc 64
store keep = a
b = kmalloc 64
store keep = b
call helper
c = kmalloc 64
store local spare = c
ret
d = kmalloc 64
e = kmalloc 64
write e-1 u8 0
write e-12 u8 0
""")
    leaks = {x["address"] for x in r.truth["leaks"]}
    # the first `a` lost its stack slot to the second (which the slot still holds, though
    # `keep` moved on to b); c's only reference died when helper returned
    (first_a,) = leaks - {r.names["c"]}
    assert len(leaks) == 2 and first_a not in r.names.values()
    assert first_a + 384 == r.names["a"]  # the next kmalloc-64 slot
    kinds = {(x["address"], x["kind"], x["first_bad"]) for x in r.truth["corrupt"]}
    assert kinds == {(r.names["e"], "redzone", r.names["e"] - 1),
                     (r.names["d"], "padding", r.names["e"] - 12)}
