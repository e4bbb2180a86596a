"""The sim dmod on a heap laid out byte for byte through the simulator's descriptors: cache,
slab and free-list walking, the slub_debug checks, ::slabinfo, ::kmem_cache, ::track and the
walkers.

The heap (HandHeap) is written here by hand, independently of the simulator, so the reader is
checked against the layout contract of mdbpy/sim/layouts.py itself; every planted fact (which
object is free, leaked, corrupt, and with which stack) is known exactly.
"""

from __future__ import annotations

import io
import struct

import pytest

from mdbpy.heap.model import ALLOC, FREE
from mdbpy.lang.engine import Engine
from mdbpy.layout.bind import X86_64, Binder
from mdbpy.session import Session
from mdbpy.sim import layouts as L
from mdbpy.symbols.base import Symbol
from mdbpy.target.base import Mapping, Thread
from mdbpy.target.synthetic import SyntheticTarget

TEXT, DATA = 0x400000, 0x600000
META, SLABS = 0x7F3000000000, 0x7F4000000000
STACK, STACK_END = 0x7FFD00000000 - 0x10000, 0x7FFD00000000
RSP = STACK_END - 0x200
FUNCS = {"_start": (0x401000, 0x20), "main": (0x401020, 0x40),
         "parse_config": (0x401060, 0x40), "kmalloc": (0x4010A0, 0x20)}
GLOBALS = {"sim_allocator": (DATA, 72), "global_head": (DATA + 0x100, 8),
           "config": (DATA + 0x108, 8), "table": (DATA + 0x110, 16)}
DEBUG = L.SIM_RED_ZONE | L.SIM_POISON | L.SIM_STORE_USER
B = Binder(L.SIM_LAYOUTS, X86_64)
TRACK = B["sim_track"].size


def pc(func: str, off: int) -> int:
    return FUNCS[func][0] + off


STACK_CFG = (pc("parse_config", 0x10), pc("main", 0x15), pc("_start", 5))
STACK_MAIN = (pc("main", 0x25), pc("_start", 5))
STACK_FREE = (pc("main", 0x31), pc("_start", 5))


def pack(struct_name: str, /, **values) -> bytes:
    s = B[struct_name]
    out = bytearray(s.size)
    for k, v in values.items():
        f = s.field(k)
        if f.kind == "array" and f.elem_kind == "char":
            raw = v
        elif f.kind == "array":
            raw = b"".join(x.to_bytes(8, "little") for x in v)
        else:
            raw = v.to_bytes(f.size, "little")
        out[f.offset:f.offset + len(raw)] = raw
    return bytes(out)


class Cache:
    """Geometry as SLUB lays a slot out (see mdbpy/sim/layouts.py)."""

    def __init__(self, name, object_size, flags, nobjs, addr):
        self.name, self.object_size, self.flags, self.n, self.addr = (name, object_size, flags,
                                                                      nobjs, addr)
        debug = flags & DEBUG
        self.red = 8 if flags & L.SIM_RED_ZONE else 0
        self.inuse = -(-object_size // 8) * 8 + (8 if debug and object_size % 8 == 0 else 0)
        self.offset = self.inuse if debug else 0
        self.track_offset = self.offset + 8 if flags & L.SIM_STORE_USER else 0
        end = (self.track_offset + 2 * TRACK + 8) if flags & L.SIM_STORE_USER else self.inuse
        self.size = -(-(self.red + end) // 8) * 8
        self.slab = None
        self.slab_desc = None

    def obj(self, k: int) -> int:
        return self.slab + k * self.size + self.red


class HandHeap:
    """Two caches: kmalloc-64 (full slub_debug, one slab of 12 objects) and inode_cache
    (no debugging, 32-byte objects, one slab of 4)."""

    def __init__(self):
        self.kc = Cache("kmalloc-64", 64, DEBUG, 12, META)
        self.ic = Cache("inode_cache", 32, 0, 4, META + 0x80)
        self.kc.slab_desc, self.ic.slab_desc = META + 0x100, META + 0x140
        self.kc.slab, self.ic.slab = SLABS, SLABS + 0x2000
        self.slab = bytearray(0x3000)
        self.data = bytearray(0x1000)
        self.stack = bytearray(0x10000)
        self.meta = bytearray(0x1000)

    def put(self, buf, base, addr, data):
        buf[addr - base:addr - base + len(data)] = data

    def word(self, buf, base, addr, v):
        self.put(buf, base, addr, struct.pack("<Q", v))

    def slot(self, c: Cache, k: int, allocated: bool, stack=(), when=0, free_stack=(),
             free_when=0):
        """Initialise slot k as slub_debug would leave it."""
        obj = c.obj(k)
        s = SLABS
        if c.flags & DEBUG:
            rz = bytes([L.SIM_REDZONE_ACTIVE if allocated else L.SIM_REDZONE_INACTIVE])
            self.put(self.slab, s, obj - c.red, rz * c.red)
            self.put(self.slab, s, obj + c.object_size, rz * (c.inuse - c.object_size))
            body = bytes(c.object_size) if allocated else (
                bytes([L.SIM_POISON_FREE]) * (c.object_size - 1) + bytes([L.SIM_POISON_END]))
            self.put(self.slab, s, obj, body)
            pad = obj + c.track_offset + 2 * TRACK
            self.put(self.slab, s, pad, bytes([L.SIM_PADDING_BYTE]) * (c.slab + (k + 1) * c.size
                                                                       - pad))
            self.put(self.slab, s, obj + c.track_offset,
                     pack("sim_track", addrs=stack, cpu=1, pid=101, when=when))
            if free_stack:
                self.put(self.slab, s, obj + c.track_offset + TRACK,
                         pack("sim_track", addrs=free_stack, cpu=0, pid=102, when=free_when))
        return obj

    def freelist(self, c: Cache, order: list[int], cycle_to: int | None = None) -> int:
        for a, b in zip(order, order[1:] + [None]):
            nxt = c.obj(b) if b is not None else (c.obj(cycle_to) if cycle_to is not None
                                                   else 0)
            self.word(self.slab, SLABS, c.obj(a) + c.offset, nxt)
        return c.obj(order[0]) if order else 0

    def build(self) -> Session:
        kc, ic = self.kc, self.ic
        objs = {}
        # live chain: global_head -> A -> B -> C (through interior pointers)
        for k, name in ((0, "A"), (1, "B"), (2, "C")):
            objs[name] = self.slot(kc, k, True, STACK_MAIN, when=10 + k)
        self.word(self.data, DATA, DATA + 0x100, objs["A"])
        self.word(self.slab, SLABS, objs["A"] + 8, objs["B"] + 0x20)
        self.word(self.slab, SLABS, objs["B"] + 0x10, objs["C"])
        # leaks from parse_config: L1 -> L2 (L1 is the head), and L3 from main
        objs["L2"] = self.slot(kc, 4, True, STACK_CFG, when=21)
        objs["L1"] = self.slot(kc, 3, True, STACK_CFG, when=22)
        self.word(self.slab, SLABS, objs["L1"], objs["L2"])
        objs["L3"] = self.slot(kc, 5, True, STACK_MAIN, when=23)
        # a stack slot above rsp keeps S alive; one below rsp (dead) does not matter
        objs["S"] = self.slot(kc, 6, True, STACK_MAIN, when=24)
        self.word(self.stack, STACK, RSP + 0x40, objs["S"])
        # overflow: one byte past the object into the right red zone (kept alive via config)
        objs["O"] = self.slot(kc, 7, True, STACK_CFG, when=25)
        self.put(self.slab, SLABS, objs["O"] + 64, b"\x41")
        self.word(self.data, DATA, DATA + 0x108, objs["O"])
        # padding damage (alive via table)
        objs["P"] = self.slot(kc, 8, True, STACK_MAIN, when=26)
        self.put(self.slab, SLABS, objs["P"] + kc.track_offset + 2 * TRACK + 2, b"\x00")
        self.word(self.data, DATA, DATA + 0x110, objs["P"])
        # free objects: U was written after free, D is on the list twice (a double free)
        objs["U"] = self.slot(kc, 9, False, STACK_MAIN, 27, STACK_FREE, 30)
        self.put(self.slab, SLABS, objs["U"] + 4, b"\x00\x00")
        objs["D"] = self.slot(kc, 10, False, STACK_CFG, 28, STACK_FREE, 31)
        objs["F"] = self.slot(kc, 11, False, STACK_MAIN, 29, STACK_FREE, 32)
        kfree = self.freelist(kc, [9, 10, 11], cycle_to=10)
        # inode_cache: no debugging; slot 0 leaked, 1 alive via table+8, 2-3 free
        for k in range(4):
            self.put(self.slab, SLABS, ic.obj(k), bytes(32))
        objs["I0"], objs["I1"] = ic.obj(0), ic.obj(1)
        self.word(self.data, DATA, DATA + 0x118, objs["I1"])
        ifree = self.freelist(ic, [2, 3])
        for c, free, inuse, nxt in ((kc, kfree, 8, ic.addr), (ic, ifree, 2, 0)):
            self.put(self.meta, META, c.addr, pack(
                "sim_kmem_cache", name=c.name.encode(), flags=c.flags,
                object_size=c.object_size, size=c.size, offset=c.offset, inuse=c.inuse,
                red_left_pad=c.red, track_offset=c.track_offset, objects_per_slab=c.n,
                slab_size=0x2000 if c is kc else 0x1000, nr_slabs=1, total_objects=c.n,
                next=nxt, slabs=c.slab_desc))
            self.put(self.meta, META, c.slab_desc, pack(
                "sim_slab", next=0, cache=c.addr, base=c.slab, freelist=free, inuse=inuse,
                objects=c.n))
        self.put(self.data, DATA, DATA, pack(
            "sim_allocator", magic=L.SIM_MAGIC, version=1, ncaches=2, caches=META,
            slab_area=SLABS, slab_area_end=SLABS + 0x3000, metadata=META,
            metadata_end=META + 0x1000, clock=40, cpus=2))
        self.objs = objs
        regs = {"rsp": RSP, "rbp": RSP + 0x100, "rip": pc("main", 0x31), "rax": 0}
        target = SyntheticTarget([
            (Mapping(TEXT, TEXT + 0x2000, "r-xp", 0, "08:01", 7, "/sim/prog"), b""),
            (Mapping(DATA, DATA + 0x1000, "rw-p", 0x2000, "08:01", 7, "/sim/prog"), self.data),
            (Mapping(META, META + 0x1000, "rw-p"), self.meta),
            (Mapping(SLABS, SLABS + 0x3000, "rw-p"), self.slab),
            (Mapping(STACK, STACK_END, "rw-p", path="[stack]"), self.stack),
        ], threads=[Thread(101, "main", regs)])
        session = Session(target, out=io.StringIO(), err=io.StringIO())
        syms = [Symbol(n, a, s, "func") for n, (a, s) in FUNCS.items()]
        syms += [Symbol(n, a, s, "object") for n, (a, s) in GLOBALS.items()]
        session.symbols.add_symbols("a.out", syms, is_exe=True)
        return session


class Harness:
    def __init__(self):
        self.heap = HandHeap()
        self.session = self.heap.build()
        self.engine = Engine(self.session)
        self.objs = self.heap.objs

    def run(self, text: str) -> str:
        out, err = self.session.out, self.session.err
        out.seek(0)
        out.truncate()
        err.seek(0)
        err.truncate()
        self.engine.run_string(text)
        return out.getvalue()

    def errors(self) -> str:
        return self.session.err.getvalue()


@pytest.fixture
def h():
    return Harness()


def test_detect_and_buffers(h):
    (sim,) = h.session.allocators()
    assert sim.name == "sim" and "sim" in h.session.registry.dmods
    t = sim.buffers()
    kc, ic = h.heap.kc, h.heap.ic
    assert [int(a) for a in t.base] == [kc.obj(k) for k in range(12)] + \
        [ic.obj(k) for k in range(4)]
    assert [int(s) for s in t.state] == [1] * 9 + [2] * 3 + [1, 1, 2, 2]
    assert int(t.ctl[0]) == kc.obj(0) + kc.track_offset and int(t.ctl[12]) == 0
    assert sim.metadata_regions() == [(META, META + 0x1000), (DATA, DATA + 72)]
    assert sim.heap_regions() == [(SLABS, SLABS + 0x3000)]
    rec = sim.record(t, 3)
    assert (rec.stack, rec.thread, rec.cpu, rec.timestamp, rec.addr) == (
        STACK_CFG, 101, 1, 22, kc.obj(3) + kc.track_offset)


def test_verify_finds_every_planted_corruption(h):
    (sim,) = h.session.allocators()
    got = [(p.kind, p.addr, p.bad, p.found, p.expected) for p in sim.verify()]
    o = h.objs
    kc = h.heap.kc
    assert sorted(got, key=lambda g: g[1]) == [
        ("Redzone overwritten", o["O"], o["O"] + 64, 0x41, 0xCC),
        ("Object padding overwritten", o["P"], o["P"] + kc.track_offset + 2 * TRACK + 2, 0,
         0x5A),
        ("Poison overwritten", o["U"], o["U"] + 4, 0, 0x6B),
        ("Object already free", o["D"], None, None, None),
    ]
    p = next(p for p in sim.verify() if p.kind == "Object already free")
    assert [(label, r.stack) for label, r in p.records] == [("Allocated", STACK_CFG),
                                                            ("Freed", STACK_FREE)]


def test_heap_verify_output(h):
    o = h.objs
    out = h.run("::heap_verify")
    assert out.startswith(
        "BUG kmalloc-64: Object already free\n"
        f"INFO: Object 0x{o['D']:x} size 64: the object is on its slab's free list twice\n"
        "INFO: Allocated in parse_config+0x10 when=0x1c cpu=1 pid=101\n"
        "        parse_config+0x10\n        main+0x15\n        _start+0x5\n"
        "INFO: Freed in main+0x31 when=0x1f cpu=0 pid=102\n"
        "        main+0x31\n        _start+0x5\n\n"
        "BUG kmalloc-64: Redzone overwritten\n"
        f"INFO: 0x{o['O'] + 64:x}-0x{o['O'] + 64:x} @offset=64. First byte 0x41 instead of "
        "0xcc\n"
        f"INFO: Object 0x{o['O']:x} size 64\n"
        "INFO: Allocated in parse_config+0x10 when=0x19 cpu=1 pid=101\n")
    assert out.endswith("sim: 4 problems in 4 buffers\n")
    assert "Poison overwritten" in out and "Object padding overwritten" in out


def test_slabinfo_golden(h):
    assert h.run("::slabinfo") == (
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> "
        ": slabdata <active_slabs> <num_slabs>\n"
        "kmalloc-64             9     12     64   12    2 : slabdata      1      1\n"
        "inode_cache            2      4     32    4    1 : slabdata      1      1\n")
    slabs = [int(a, 16) for a in h.run("::slabinfo | ::walk sim_slab").split()]
    assert slabs == [h.heap.kc.slab_desc, h.heap.ic.slab_desc]


def test_kmem_cache(h):
    kc = h.heap.kc
    out = h.run("::kmem_cache")
    assert out.splitlines()[1] == (f"{META:016x} kmalloc-64           "
                                   f"{'RED_ZONE|POISON|STORE_USER':<24s}      64 {kc.size:6d}"
                                   "      1       12")
    detail = h.run(f"{META:x}::kmem_cache")
    assert f"  track_offset      {kc.track_offset}\n" in detail
    assert f"    [0x0, 0x8) left red zone\n    [0x8, 0x48) object\n" in detail
    assert h.run("1234::kmem_cache") == ""
    assert h.errors() == "mdbpy: 0x1234 is not a sim cache (see ::walk sim_cache)\n"


def test_track(h):
    o = h.objs
    out = h.run(f"{o['U'] + 0x30:x}::track")
    kc = h.heap.kc
    assert out == (
        f"object 0x{o['U']:x} in cache kmalloc-64 (free), tracks at "
        f"0x{o['U'] + kc.track_offset:x}\n"
        "INFO: Allocated in main+0x25 when=0x1b cpu=1 pid=101\n"
        "        main+0x25\n        _start+0x5\n"
        "INFO: Freed in main+0x31 when=0x1e cpu=0 pid=102\n"
        "        main+0x31\n        _start+0x5\n")
    assert h.run(f"{o['A']:x}::track").endswith("INFO: Freed: never\n")
    h.run(f"{o['I0']:x}::track")
    assert h.errors() == "mdbpy: cache inode_cache does not store tracks (no STORE_USER)\n"


def test_walkers(h):
    kc, ic = h.heap.kc, h.heap.ic

    def walk(cmd):
        return [int(x, 16) for x in h.run(cmd).split()]

    assert walk("::walk sim_cache") == [META, META + 0x80]
    assert walk("::walk sim_slab") == [kc.slab_desc, ic.slab_desc]
    assert walk(f"{META + 0x80:x}::walk sim_slab") == [ic.slab_desc]
    assert walk("::walk sim_obj") == [kc.obj(k) for k in range(9)] + [ic.obj(0), ic.obj(1)]
    assert walk("::walk sim_free") == [kc.obj(k) for k in (9, 10, 11)] + [ic.obj(2),
                                                                             ic.obj(3)]
    assert walk(f"{META:x}::walk sim_free") == [kc.obj(k) for k in (9, 10, 11)]
    assert walk("::walk inode_cache") == [ic.obj(0), ic.obj(1)]
    assert walk("::walk kmalloc-64") == [kc.obj(k) for k in range(9)]


# -- against the simulator's ground truth -------------------------------------------------------
SCENARIOS = {
    "leaks": """
program leaky
global head
global keep 16
thread main
call main
a = kmalloc 32
b = kmalloc 32
c = kmalloc 32
store a = b+8
store b+16 = c
store head = a
store local a = null
store local b = null
store local c = null
call helper
tmp = kmalloc 64
lost1 = kmalloc 64
lost2 = kmalloc 64
store lost1 = lost2
store tmp = null
ret
held = kmalloc 128
call build_cache
e = alloc objs
store keep+8 = e
gone = alloc objs
ret
""",
    "overflow": """
program ovf
global g 16
thread main
call main
p = kmalloc 24
store g = p
call fill
write p+24 "AB"
q = kmalloc 64
store g+8 = q
write q+64 u8 0x41
ret
""",
    "underflow": """
program unf
global g 16
thread main
call main
p = kmalloc 64
q = kmalloc 64
store g = p
store g+8 = q
call rewind
memset q-12 0 4
ret
""",
    "use_after_free": """
program uaf
global g
thread main
call main
p = kmalloc 96
store g = p
call release
free p
ret
call poke
write p+40 u32 7
ret
""",
    "double_free": """
program dbl
global g
thread main
call main
p = kmalloc 48
call drop
free p
ret
call drop_again
free p
ret
""",
}
KIND_WORDS = {"redzone": "Redzone overwritten", "poison": "Poison overwritten",
              "padding": "Object padding overwritten", "double free": "Object already free"}
OBJS_CACHE = "cache objs 40\n"


@pytest.fixture
def open_scenario(tmp_path):
    """open_scenario(name) -> (session, engine, truth, result): the scenario written as PROG +
    core and opened as the CLI opens `mdbpy PROG CORE`; the sessions close when the test
    ends."""
    from mdbpy.sim.build import build, write
    from mdbpy.target.core import CoreTarget

    opened = []

    def open_(name: str):
        text = SCENARIOS[name]
        if "alloc objs" in text:
            text = text.replace("program leaky\n", "program leaky\n" + OBJS_CACHE)
        r = build(text)
        prog, core, _ = write(r, str(tmp_path / name))
        s = Session(CoreTarget(core, exe=prog), out=io.StringIO(), err=io.StringIO())
        opened.append(s)
        return s, Engine(s), r.truth, r

    yield open_
    for s in opened:
        s.close()


def names(session, stack) -> list[str]:
    return [session.format_addr(pc).split("+", 1)[0] for pc in stack]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_findleaks_matches_the_truth(name, open_scenario):
    from mdbpy.heap.leaks import find_leaks

    s, _, truth, _ = open_scenario(name)
    (sim,) = s.allocators()
    report = find_leaks(s, [sim])
    got = {leak.addr: names(s, leak.record.stack) for leak in report.leaks}
    want = {x["address"]: x["alloc_stack"] for x in truth["leaks"]}
    assert got == want
    if name == "leaks":
        assert len(want) == 4 and sorted(x["name"] for x in truth["leaks"]) == [
            "gone", "lost1", "lost2", "tmp"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_verify_matches_the_truth(name, open_scenario):
    s, _, truth, r = open_scenario(name)
    (sim,) = s.allocators()
    problems = sim.verify()
    got = sorted((p.kind, p.addr, p.bad) for p in problems)
    want = sorted((KIND_WORDS[c["kind"]], c["address"],
                   None if c["kind"] == "double free" else c["first_bad"])
                  for c in truth["corrupt"])
    assert got == want
    for p in problems:
        c = next(c for c in truth["corrupt"] if c["address"] == p.addr)
        stacks = {label: names(s, rec.stack) for label, rec in p.records}
        assert stacks["Allocated"] == c["alloc_stack"]
        assert stacks.get("Freed") == c["free_stack"]
    if name == "double_free":
        # freed twice in a row: the object's free pointer points at itself, so the walk
        # meets it again at once; the slab's 20 other free objects are cut off the list and
        # recognized by their inactive red zones
        (d,) = truth["corrupt"]
        (p,) = problems
        cache = sim.cache_named(d["cache"])
        assert s.mem.read_u64(d["address"] + cache.view.offset) == d["address"]
        assert p.note == ("the object is on its slab's free list twice; 20 free objects "
                          "after it cut off the list (known by their inactive red zones)")
        assert truth["caches"]["kmalloc-64"]["free"] == 21
        t = sim.buffers()
        assert int((t.state == FREE).sum()) == 21 and int((t.state == ALLOC).sum()) == 0
        assert [(h.inuse, h.total) for h in sim.stats() if h.group == "kmalloc-64"] == [
            (0, 21)]
    else:
        assert {c["kind"] for c in truth["corrupt"]} <= set(KIND_WORDS)
        assert bool(truth["corrupt"]) == (name != "leaks")


def test_sim_chain_walkers_and_whatis(open_scenario):
    s, e, truth, r = open_scenario("leaks")
    a, b, c = (r.names[k] for k in "abc")
    e.run_string(f"{c + 4:x}::whyalive")
    assert s.out.getvalue() == (
        f"{c + 4:x} is {c:x}+4, allocated from kmalloc-32, reachable through:\n"
        f"    {'head (leaky bss)':<40s} -> {a:x} (kmalloc-32)\n"
        f"    {f'{a:x}+0':<40s} -> {b:x} (kmalloc-32)\n"
        f"    {f'{b:x}+10':<40s} -> {c:x} (kmalloc-32)\n")
    s.out.seek(0)
    s.out.truncate()
    e.run_string("::walk objs")
    assert [int(x, 16) for x in s.out.getvalue().split()] == sorted(
        [r.names["e"], r.names["gone"]])
    s.out.seek(0)
    s.out.truncate()
    e.run_string(f"{r.names['held'] + 8:x}::whatis -q")
    held = r.names["held"]
    cache = next(c for c in s.allocators()[0].caches() if c.name == "kmalloc-128")
    assert s.out.getvalue() == (f"{held + 8:x} is {held:x}+8, track "
                                f"{held + cache.view.track_offset:x} allocated from "
                                "kmalloc-128\n")


def test_cli_on_written_files(tmp_path):
    from support import run_mdbpy

    from mdbpy.sim.build import build, write

    r = build(SCENARIOS["leaks"].replace("program leaky\n", "program leaky\n" + OBJS_CACHE))
    prog, core, _ = write(r, str(tmp_path))
    p = run_mdbpy(prog, core, "-e", "::findleaks; ::heap_verify -q")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "CACHE             LEAKED           BUFCTL CALLER"
    assert [ln[17:24] + ln[41:] for ln in lines[1:5]] == [
        "      1 build_cache+0xe", "      1 helper+0x9", "      1 helper+0xe",
        "      1 helper+0x13"]
    assert lines[5:] == ["-" * 72, "           Total       4 buffers, 232 bytes",
                         "sim: heap is clean"]


def test_corrupt_lists_are_bounded():
    heap = HandHeap()
    session = heap.build()
    kc, ic = heap.kc, heap.ic
    tgt = session.target
    tgt.writable = True
    nxt = B["sim_kmem_cache"].offset("next")
    tgt.write(ic.addr + nxt, META.to_bytes(8, "little"))  # cache list loops back
    tgt.write(kc.slab_desc, kc.slab_desc.to_bytes(8, "little"))  # slab points to itself
    tgt.write(ic.obj(2), (0x1234).to_bytes(8, "little"))  # wild free pointer
    (sim,) = session.allocators()
    assert [c.name for c in sim.caches()] == ["kmalloc-64", "inode_cache"]
    assert [len(c.slabs) for c in sim.caches()] == [1, 1]
    assert [int(s) for s in sim.buffers().state[12:]] == [1, 1, 2, 1]
    kinds = [(p.kind, p.addr, p.note) for p in sim.verify() if p.group == "inode_cache"]
    assert kinds == [("Freechain corrupt", 0x1234,
                      f"free pointer 0x1234 in slab 0x{ic.slab_desc:x} points to no object")]
