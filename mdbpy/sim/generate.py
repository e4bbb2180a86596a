"""Large simulated heaps for benchmarks: millions of objects, built with numpy in bulk.

The heap of `generate()` holds a long linked list (from the global `list_head`), a binary tree
(`tree_root`), arrays of pointers to items (the global `tables` points at every array), and
leaked items: `leak_fraction` of all objects, allocated from their own stack, unreachable, and
chained in fours so that a leak finder must also handle leaked objects that point at each
other. Objects are interleaved with leaks in the item cache by a seeded permutation; every slot
carries real red zones, poison, padding and an alloc track, exactly as a scenario's would.

The program around the heap is an ordinary scenario (the same planner, code and threads), so
the result opens like any other: `write(generate(...), dir)` then `mdbpy PROG CORE`.
"""

from __future__ import annotations

from mdbpy.sim import truth as T
from mdbpy.sim.build import SimResult, result_of, roots
from mdbpy.sim.run import Simulation, plan
from mdbpy.sim.scenario import parse
from mdbpy.sim.slub import SimCache, Slub

LEAK_CHAIN = 4  # leaked items point at the next in groups of this many
ITEM_SIZE, NODE_SIZE, TREE_SIZE = 48, 24, 40

# the program: who calls whom, and which function allocates each kind of object
PROGRAM = """\
program {name}
seed {seed}
cache tree_node {tree_size}
global list_head
global tree_root
global tables {tables}
call main
call build_list
ret
call build_tree
call tree_insert
ret
ret
call fill_tables
call new_item
ret
ret
call handle_request
call parse_header
ret
ret
call wait_for_work
"""
# kind -> (cache, size asked, allocating function, its callers up to _start)
KINDS = {
    "node": ("kmalloc-32", NODE_SIZE, "kmalloc", ["build_list", "main", "_start"]),
    "tree": ("tree_node", TREE_SIZE, "kmem_cache_alloc",
             ["tree_insert", "build_tree", "main", "_start"]),
    "array": (None, None, "kmalloc", ["fill_tables", "main", "_start"]),
    "item": ("kmalloc-64", ITEM_SIZE, "kmalloc", ["new_item", "fill_tables", "main", "_start"]),
    "leak": ("kmalloc-64", ITEM_SIZE, "kmalloc",
             ["parse_header", "handle_request", "main", "_start"]),
}


def generate(n_objects: int, leak_fraction: float = 0.01, seed: int = 0, *,
             list_len: int | None = None, tree_nodes: int | None = None, fanout: int = 512,
             name: str = "simheap", check: bool = False) -> SimResult:
    """A heap of exactly n_objects allocated objects, round(n_objects * leak_fraction) of them
    leaked. list_len and tree_nodes default to a tenth of the heap each (at most 100,000);
    arrays hold `fanout` pointers each. With `check`, the leaks are also found by a
    conservative scan and must agree with the construction (slower; for tests)."""
    import numpy as np

    if not 0 <= leak_fraction < 1:
        raise ValueError("leak_fraction must be in [0, 1)")
    if not 1 <= fanout <= 1024:
        raise ValueError("fanout must be in [1, 1024]")
    leaks = round(n_objects * leak_fraction)
    list_len = min(100_000, n_objects // 10) if list_len is None else list_len
    tree_nodes = min(100_000, n_objects // 10) if tree_nodes is None else tree_nodes
    rest = n_objects - leaks - list_len - tree_nodes
    if rest < 2 or min(list_len, tree_nodes) < 0:
        raise ValueError("n_objects too small for the requested list, tree and leaks")
    n_arrays = -(-rest // (fanout + 1))
    counts = {"node": list_len, "tree": tree_nodes, "array": n_arrays,
              "item": rest - n_arrays, "leak": leaks}
    rng = np.random.default_rng(seed)

    stmts = parse(PROGRAM.format(name=name, seed=seed, tree_size=TREE_SIZE,
                                 tables=8 * n_arrays))
    prog = plan(stmts)
    for _, _, alloc_fn, stack in KINDS.values():
        prog.code.site(stack[0], "alloc", alloc_fn)
    sim = Simulation(prog)
    sim.run(stmts)
    slub = sim.slub
    caches = {k: slub.by_name[c] if c else slub.kmalloc_cache(8 * fanout)
              for k, (c, *_) in KINDS.items()}
    used = [slub.by_name[n] for n in dict.fromkeys(c.name for c in caches.values())]
    # carve every slab first (numpy views of the slab area must not see it grow) ...
    pools = {}
    for c in used:
        total = sum(n for k, n in counts.items() if caches[k] is c)
        first = len(c.slabs)
        slub.new_slabs(c, max(1, -(-total // c.geom.objects)), chain=False)
        pools[c.name] = (first, total)
    # ... then hand each kind its share of its cache's slots, kinds interleaved at random
    mats, addrs = {}, {}
    for c in used:
        first, total = pools[c.name]
        m = mats[c.name] = _Slots(sim, c, first)
        m.mark_allocated(total)
        order = rng.permutation(total)
        taken = 0
        for kind in KINDS:
            if caches[kind] is c:
                addrs[kind] = (m, order[taken:taken + counts[kind]])
                taken += counts[kind]
    clock = sim.clock
    for kind, (m, k) in addrs.items():
        clock = m.track(k, _pcs(sim, KINDS[kind][3]), rng, clock)
    obj = {kind: m.objects(k) for kind, (m, k) in addrs.items()}

    def put(kind, off, values):
        m, k = addrs[kind]
        m.words(k, off, values)

    n = obj["node"]
    put("node", 0, np.append(n[1:], np.uint64(0)))
    put("node", 8, np.arange(len(n), dtype=np.uint64))
    t = obj["tree"]
    kid = np.arange(len(t), dtype=np.int64)
    for off, child in ((0, 2 * kid + 1), (8, 2 * kid + 2)):
        put("tree", off, np.where(child < len(t), t[np.minimum(child, max(len(t) - 1, 0))], 0))
    put("tree", 16, kid.astype(np.uint64))
    table = np.zeros(n_arrays * fanout, np.uint64)
    table[:counts["item"]] = obj["item"]
    for j in range(fanout):  # one column of every array at a time
        put("array", 8 * j, table[j::fanout])
    put("item", 0, np.arange(counts["item"], dtype=np.uint64))
    lk = obj["leak"]
    chain = (np.arange(len(lk)) + 1) % LEAK_CHAIN != 0
    put("leak", 0, np.where(chain, np.append(lk[1:], np.uint64(0)), 0).astype(np.uint64))
    mats.clear()

    g, data = sim.global_addr, sim.data
    _put_words(data, g["list_head"], n[:1] if len(n) else [0])
    _put_words(data, g["tree_root"], t[:1] if len(t) else [0])
    _put_words(data, g["tables"], obj["array"])
    for c in used:
        _free_tail(slub, c, *pools[c.name])
    sim.clock = clock
    sim.finish()
    return result_of(sim, _truth(sim, lk, caches["leak"], check))


def _put_words(region, addr: int, values) -> None:
    import numpy as np

    raw = np.asarray(values, dtype="<u8").tobytes()
    region.view(addr, len(raw))[:] = raw


class _Slots:
    """A cache's new slabs as numpy views: bytes [slab, slot, byte] and words [slab, slot,
    word], so one field of many objects is written in one assignment."""

    def __init__(self, sim: Simulation, c: SimCache, first: int):
        import numpy as np

        self.sim, self.c, self.g = sim, c, c.geom
        g = self.g
        area = sim.slab_area
        base = c.slabs[first].base
        n = len(c.slabs) - first
        off = base - area.start
        self.base = base
        self.bytes = np.ndarray((n, g.objects, g.size), np.uint8, area.data, off,
                                (g.slab_size, g.size, 1))
        self.u32 = np.ndarray((n, g.objects, g.size // 4), "<u4", area.data, off,
                              (g.slab_size, g.size, 4))
        self.u64 = np.ndarray((n, g.objects, g.size // 8), "<u8", area.data, off,
                              (g.slab_size, g.size, 8))

    def _at(self, k):
        return k // self.g.objects, k % self.g.objects

    def objects(self, k):
        import numpy as np

        s, i = self._at(k)
        g = self.g
        return (np.uint64(self.base) + (s * g.slab_size + i * g.size + g.red_left_pad)
                .astype(np.uint64))

    def words(self, k, obj_off: int, values) -> None:
        s, i = self._at(k)
        self.u64[s, i, (self.g.red_left_pad + obj_off) // 8] = values

    def mark_allocated(self, total: int) -> None:
        """Slots [0, total) become allocated: active red zones (their free pointers stay 0)."""
        full, rem = divmod(total, self.g.objects)
        for name in ("left redzone", "right redzone"):
            a, b = self.g.regions()[name]
            self.bytes[:full, :, a:b] = 0xCC
            self.bytes[full:full + 1, :rem, a:b] = 0xCC

    def track(self, k, pcs: list[int], rng, clock: int) -> int:
        """Alloc tracks for slots k, allocated in that order from `clock` on; returns the
        clock after the last one."""
        import numpy as np

        tr = self.sim.track_struct
        t = self.g.track_offset
        for j, pc in enumerate(pcs + [0]):
            self.words(k, t + tr.offset("addrs") + 8 * j, pc)
        s, i = self._at(k)
        rlp = self.g.red_left_pad
        self.u32[s, i, (rlp + t + tr.offset("cpu")) // 4] = rng.integers(0, self.sim.cpus,
                                                                          len(k))
        self.u32[s, i, (rlp + t + tr.offset("pid")) // 4] = self.sim.pid
        when = clock + rng.integers(1_000, 100_000, len(k)).cumsum()
        self.words(k, t + tr.offset("when"), when.astype(np.uint64))
        return int(when[-1]) if len(k) else clock


def _pcs(sim: Simulation, stack: list[str]) -> list[int]:
    """Return addresses of an allocation in stack[0] called through stack[1:]."""
    code = sim.code
    pcs = [code.ret_addr(stack[0], "alloc")]
    for callee, caller in zip(stack, stack[1:]):
        key = next(k for k, (_, f) in code.sites[caller].items() if f == callee)
        pcs.append(code.ret_addr(caller, key))
    return pcs


def _free_tail(slub: Slub, c: SimCache, first: int, total: int) -> None:
    """Slots past the first `total` of the new slabs stay free: only the last slab has some;
    chain them on its free list in address order, as a fresh slab's."""
    g = c.geom
    for j, s in enumerate(c.slabs[first:]):
        lo = min(g.objects, max(0, total - j * g.objects))
        objs = [s.base + i * g.size + g.red_left_pad for i in range(lo, g.objects)]
        for obj, nxt in zip(objs, objs[1:] + [0]):
            slub.put_word(obj + g.offset, nxt)
        s.free = objs[::-1]


def _truth(sim: Simulation, leaked, cache: SimCache, check: bool) -> dict:
    stack = KINDS["leak"][3]
    leaks = sorted(int(a) for a in leaked)
    if check:
        found = T.unreachable(sim.slub, roots(sim))
        if found != leaks:
            raise AssertionError(f"generator: {len(found)} unreachable, {len(leaks)} planted")
    counts = T.cache_counts(sim.slub)
    for name, c in counts.items():
        c["leaked"] = len(leaks) if name == cache.name else 0
        c["corrupt"] = 0
    return {"program": sim.name, "pid": sim.pid, "corrupt": [], "caches": counts,
            "leaks": [{"address": a, "cache": cache.name, "size": ITEM_SIZE, "name": None,
                       "thread": "main", "alloc_stack": stack} for a in leaks],
            "roots": {"data": [sim.data.start, sim.data.end],
                      "stacks": {t.name: [t.top.rsp, t.stack.end]
                                 for t in sim.threads.values()}}}
