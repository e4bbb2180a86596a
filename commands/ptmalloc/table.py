"""The chunk table: every chunk of every arena's heaps, the mmapped chunks and their states,
as numpy columns, built once per stop of the target from the located malloc state (locate.py),
the heap walks (chunks.py) and the free lists (bins.py). The allocator's buffers, the
listings and ::ptmalloc_verify all read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from mdbpy.errors import ReadError
from mdbpy.heap.damage import Damage, warn
from mdbpy.heap.model import ALLOC, FREE

from .bins import Walker
from .chunks import (explain_mmap_count, mmap_count_damage, mmap_counters, mmapped_chunks,
                     walk_heap)
from .damage import arena_owner
from .layouts import ROLE_TCACHE_STRUCT, ROLE_TOP
from .locate import locate


@dataclass
class ChunkTable:
    """Every chunk found: numpy columns in address order, plus where free ones are listed."""

    addr: object  # uint64
    size: object  # uint64
    flags: object  # uint8
    state: object  # uint8: ALLOC, FREE, ROLE_TOP, ROLE_TCACHE_STRUCT
    arena: object  # int32: index into state.arenas, -1 for mmapped chunks
    mmapped: object  # bool
    bad: object  # bool: the header was unusable (size up to the resync point)
    where: dict  # chunk address -> bin name ('tcache[2]', 'fastbin[0]', 'unsorted', ...)
    damage: list  # [Damage] met finding the arenas, walking the heaps and the lists
    bins: list  # BinList of every non-empty list
    # mmapped chunk -> its prev_size, where not 0 (memalign moved the chunk into its mapping):
    # the mapping glibc made starts that far before the chunk
    mmap_lead: dict = field(default_factory=dict)
    # [start, end) of the foreign sbrk blocks inside the main heap (HeapWalk.foreign)
    foreign: list = field(default_factory=list)


def chunk_table(session, progress=None) -> ChunkTable:
    """The chunk table of the target (cached per stop); the damage met building it is
    printed as warnings, once. progress is the caller's progress(done, total) callback (as
    ::heap_verify passes one); without one the walk of the heaps, which reads all of them
    (many GiB in a big process), shows a bar of its own. Ctrl-C (KeyboardInterrupt) goes to
    the caller, which knows what it was doing (findleaks: 'findleaks: interrupted'), else to
    the engine; nothing is cached from an interrupted walk."""
    t = session.cache.get("ptmalloc.chunks")
    if t is None:
        t = _build(session, progress) if progress is not None else _build_shown(session)
        session.cache["ptmalloc.chunks"] = t
        warn(session, "ptmalloc", t.damage)
    return t


def _build_shown(session) -> ChunkTable:
    from mdbpy.heap.report import Progress

    progress = Progress(session, "ptmalloc: walking the heaps")
    try:
        return _build(session, progress)
    finally:
        progress.close()


COLUMNS = {"addr": "uint64", "size": "uint64", "flags": "uint8", "state": "uint8",
           "arena": "int32", "mmapped": "bool", "bad": "bool"}


def _build(session, progress) -> ChunkTable:
    import numpy as np

    st = locate(session)
    parts: list[dict] = []
    damage: list = list(st.damage)
    foreign: list = []
    total = sum(max(h.end - h.first, 0) for a in st.arenas for h in a.heaps)
    walked = 0  # bytes of the heaps walked before the current one

    def add(addr, size, flags, state, arena, mmapped=False, bad=None):
        n = len(addr)
        parts.append({"addr": addr, "size": size, "flags": flags, "state": state,
                      "arena": np.full(n, arena, np.int32), "mmapped": np.full(n, mmapped),
                      "bad": np.zeros(n, bool) if bad is None else bad})

    for a in st.arenas:
        owner = arena_owner(a.addr)
        for h in a.heaps:
            def step(done: int, _span: int, base: int = walked) -> None:
                progress(base + done, total)

            walked += max(h.end - h.first, 0)
            try:
                w = walk_heap(session.mem, h.first, h.end, h.top, step)
            except ReadError as e:
                damage.append(Damage(owner, h.first, f"heap 0x{h.first:x}: unreadable ({e}); "
                                     "not walked", h.first, h.region[1]))
                continue
            damage += [Damage(owner, addr, why, addr, end) for addr, end, why in w.problems]
            foreign += w.foreign
            add(w.addr, w.size, w.flags,
                np.where(w.next_prev_inuse, np.uint8(ALLOC), np.uint8(FREE)), a.index, bad=w.bad)
            del w  # its columns live on in parts only, to be freed once joined
            if h.top is not None:
                # the top's extent, as far as its heap allows (its size may be smashed)
                try:
                    raw = session.mem.read_u64(h.top + 8)
                except ReadError:
                    raw = 0
                size = min(raw & ~7, max(h.region[1] - h.top, 0))
                add(np.asarray([h.top], np.uint64), np.asarray([size], np.uint64),
                    np.asarray([raw & 7], np.uint8), np.asarray([ROLE_TOP], np.uint8), a.index)
    counted = mmap_counters(st)
    mm = mmapped_chunks(session.mem, st.heap_ranges(), counted)
    mm, overlaps = explain_mmap_count(session.mem, st.heap_ranges(), counted, mm)
    damage += overlaps or mmap_count_damage(st, counted, mm)
    if mm:
        add(np.asarray([c.addr for c in mm], np.uint64), np.asarray([c.size for c in mm],
                                                                   np.uint64),
            np.full(len(mm), 2, np.uint8), np.full(len(mm), ALLOC, np.uint8), -1, True)
    c = {}
    for k, t in COLUMNS.items():  # a column at a time, its parts let go once it is joined
        c[k] = (np.concatenate([p.pop(k) for p in parts]).astype(t, copy=False) if parts
                else np.zeros(0, t))
    del parts
    if len(c["addr"]) > 1 and np.any(c["addr"][1:] < c["addr"][:-1]):  # arenas out of order
        order = np.argsort(c["addr"], kind="stable")
        c = {k: v[order] for k, v in c.items()}

    if st.tcaches:
        tc = np.isin(c["addr"], np.asarray([t.addr - 16 for t in st.tcaches], np.uint64))
        c["state"][tc] = ROLE_TCACHE_STRUCT
    walker = Walker(session, st, SimpleNamespace(**c))  # entries must be chunks of the walk
    lists = walker.all()
    where: dict[int, str] = {}
    cached = []
    for lst in lists:
        damage += lst.problems
        for ch in lst.chunks:
            where.setdefault(ch, lst.name)
        if lst.kind in ("tcache", "fastbin"):
            cached += lst.chunks
    if cached:
        hit = np.isin(c["addr"], np.asarray(cached, np.uint64))
        c["state"][hit & (c["state"] == ALLOC)] = FREE
    damage += walker.tcache_keys(lists)
    return ChunkTable(c["addr"], c["size"], c["flags"], c["state"], c["arena"], c["mmapped"],
                      c["bad"], where, damage, lists,
                      {m.addr: m.prev_size for m in mm if m.prev_size}, foreign)
