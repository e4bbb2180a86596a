"""PtmallocAllocator: glibc malloc seen through the generic heap interface.

Buffers are chunks as the program sees them: [chunk + 16, chunk + size + 8) for heap chunks
(an in-use chunk owns the next chunk's prev_size word), [chunk + 16, chunk + size) for mmapped
ones. A chunk is in use when the next header's PREV_INUSE bit says so, except that tcache and
fastbin chunks keep that bit set while free: list membership makes them FREE. Each thread's
tcache_perthread_struct is allocator metadata, never a leak. Leaks are grouped by chunk size,
with a type hint: a C++ vtable pointer at the start names its class, a printable prefix is
shown as a string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from mdbpy.errors import ReadError
from mdbpy.heap.damage import Damage, warn
from mdbpy.heap.model import (ALLOC, FREE, KIND_BUFFER, KIND_OVERSIZE, Allocator, BufferTable,
                              Problem)

from .bins import Walker
from .chunks import (explain_mmap_count, mmap_count_damage, mmap_counters, mmapped_chunks,
                     walk_heap)
from .damage import arena_owner
from .layouts import HEAP_MAX_SIZE
from .locate import WARNED, locate

# chunk roles, beyond ALLOC / FREE, for listings
ROLE_TOP = 3
ROLE_TCACHE_STRUCT = 4
HINT_BYTES = 32


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
                np.where(w.next_prev_inuse, ALLOC, FREE).astype(np.uint8), a.index, bad=w.bad)
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
    c = {k: (np.concatenate([p[k] for p in parts]).astype(t) if parts else np.zeros(0, t))
         for k, t in COLUMNS.items()}
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


class PtmallocAllocator(Allocator):
    name = "ptmalloc"
    record_name = "chunk"  # a buffer's control address is its chunk header

    def __init__(self, session):
        super().__init__(session)
        self.state = locate(session)
        self.version = self.state.version
        self.binder = self.state.structs
        self._buffers = None  # (the chunk table, the buffers made of it)

    @classmethod
    def detect(cls, session):
        from mdbpy.errors import MdbError

        from .locate import NotInUse

        try:
            return cls(session)
        except NotInUse:
            return None
        except MdbError as e:
            session.warn(str(e))
            return None

    def chunks(self) -> ChunkTable:
        return chunk_table(self.session)

    def buffers(self) -> BufferTable:
        """Every chunk but the tops and the tcache structs, as the program's buffers, grouped
        by chunk size (made once per chunk table: findleaks and its statistics both ask)."""
        import numpy as np

        t = self.chunks()
        if self._buffers is not None and self._buffers[0] is t:
            return self._buffers[1]
        keep = (t.state == ALLOC) | (t.state == FREE)
        addr, size = t.addr[keep], t.size[keep]
        mm = t.mmapped[keep]
        base = addr + np.uint64(16)
        usable = np.where(mm, size - np.uint64(16), size - np.uint64(8))
        sizes, group = size_classes(size)
        table = BufferTable.from_columns(
            base, usable, t.state[keep], group, addr,
            np.where(mm, KIND_OVERSIZE, KIND_BUFFER).astype(np.uint8),
            groups=sizes.tolist(), sort=False)
        self._buffers = (t, table)
        return table

    def heap_regions(self) -> list[tuple[int, int]]:
        """The heaps less the foreign sbrk blocks inside the main heap (another allocator's
        memory, for the one heap to decide), and each mmapped chunk's whole mapping as glibc
        made it (from before the chunk when memalign moved it), across every mapping
        mprotect split it into."""
        from mdbpy.heap.roots import subtract
        from mdbpy.heap.scan import Root

        t = self.chunks()
        out = [(r.start, r.end) for r in subtract([Root(a, b, "") for a, b in
                                                    self.state.heap_ranges()], t.foreign)]
        mm = t.mmapped
        lead = t.mmap_lead
        out += [(a - lead.get(a, 0), a + s) for a, s in zip(t.addr[mm].tolist(),
                                                            t.size[mm].tolist())]
        return out

    def metadata_regions(self) -> list[tuple[int, int]]:
        """The tcache structs, the main arena (in libc's data: its top and bin pointers are
        chunk headers, which lie inside the buffer before them), the thread arenas' headers
        (heap_info, malloc_state), and the rest of each thread heap's HEAP_MAX_SIZE
        reservation (PROT_NONE until the heap grows; gcore writes it as readable zeros)."""
        st = self.state
        out = [(t.addr - 16, t.addr - 16 + st.tcache_chunk_size) for t in st.tcaches]
        out.append((st.main_arena, st.main_arena + st.structs["malloc_state"].size))
        for a in st.arenas:
            for h in a.heaps:
                if h.info is not None:
                    out.append((h.info, h.first))
                    out.append((h.region[1], max(h.region[1], h.info + HEAP_MAX_SIZE)))
        return out

    def untrusted(self) -> list[tuple[int, int, str]]:
        """The memory each damage left unwalked or suspect (see damage.py)."""
        return [(d.start, d.end, d.what) for d in
                self.chunks().damage if d.end > d.start]

    def group_addr(self, table: BufferTable, i: int) -> int:
        """The arena of buffer i (0 for an mmapped chunk, which belongs to none)."""
        return int(self._arena_addrs(table.ctl[i:i + 1])[0])

    def group_addrs(self, table: BufferTable):
        return self._arena_addrs(table.ctl)

    def _arena_addrs(self, ctl):
        """The arena of each chunk header address (0 for an mmapped chunk or no chunk)."""
        import numpy as np

        t = self.chunks()
        out = np.zeros(len(ctl), np.uint64)
        if not len(t.addr):
            return out
        k = np.minimum(np.searchsorted(t.addr, ctl), len(t.addr) - 1)
        ok = (t.addr[k] == ctl) & (t.arena[k] >= 0)
        arenas = np.array([a.addr for a in self.state.arenas] or [0], np.uint64)
        out[ok] = arenas[t.arena[k[ok]]]
        return out

    def verify(self, progress=None) -> list[Problem]:
        """The problems ::ptmalloc_verify prints, for the generic ::heap_verify."""
        from .verify import verify

        return [Problem(msg, "ptmalloc", addr) for addr, msg in verify(self.session, progress)]

    def group_name(self, table: BufferTable, i: int) -> str:
        return self.group_names(table, [i])[0]

    def group_names(self, table: BufferTable, indexes) -> list[str]:
        """Per chunk: a chunk's name carries the type hint read from its contents (all the
        chunks' first bytes read at once: findleaks names ten thousand leaks)."""
        import numpy as np

        idx = np.asarray(indexes, np.int64)
        sizes = [table.groups[g] if table.groups else 0 for g in table.group[idx].tolist()]
        hints = type_hints(self.session, table.base[idx], table.size[idx])
        return [f"chunk 0x{size:x}" + (f" {hint}" if hint else "")
                for size, hint in zip(sizes, hints)]


def size_classes(size):
    """(distinct sizes, each chunk's index among them) of chunk sizes: counted by size/16 in one
    pass where the largest is small (a heap's chunks), sorted where it is not (huge mmapped
    chunks): np.unique's sort of a million sizes costs ten times the count."""
    import numpy as np

    q = size >> np.uint64(4)
    if not len(q) or int(q.max()) >= 1 << 22 or np.any(size & np.uint64(15)):
        sizes, group = np.unique(size, return_inverse=True)
        return sizes, group.astype(np.int32).reshape(-1)
    seen = np.bincount(q.astype(np.int64)) > 0
    index = (np.cumsum(seen) - 1).astype(np.int32)
    return np.flatnonzero(seen).astype(np.uint64) << np.uint64(4), index[q.astype(np.int64)]


def type_hints(session, addrs, sizes) -> list[str]:
    """Per buffer: 'Widget' for a C++ object whose first word is a vtable of class Widget,
    '"text..."' for a printable prefix that is not a pointer's bytes, else ''. The first
    HINT_BYTES of every buffer are read in one gather; symbols are looked up once per distinct
    first word that lies in a loaded object (a vtable is in one), and text is decoded only
    where the bytes are printable."""
    import numpy as np

    from mdbpy.heap.bulk import gather

    n = len(addrs)
    rows, ok = gather(session.mem, addrs, HINT_BYTES)
    have = np.minimum(np.asarray(sizes, np.int64), HINT_BYTES)
    have[~ok] = 0
    cols = np.arange(HINT_BYTES)
    inside = cols[None, :] < have[:, None]
    words = np.where(have >= 8, rows[:, :8].copy().view("<u8")[:, 0], 0)
    names: dict[int, str] = {}
    objs = [(o.base, o.end) for o in session.symbols.objects()]
    for w in np.unique(words[words != 0]).tolist():
        if any(a <= w < b for a, b in objs):
            hit = session.symbols.lookup_addr(w)
            if hit is not None and hit[0].name.startswith("_ZTV"):
                names[w] = demangle_vtable(hit[0].name) or ""
    # the printable prefix: bytes before the first NUL (or the end of what was read)
    nul = np.where(inside & (rows == 0), cols[None, :], HINT_BYTES).min(axis=1)
    end = np.minimum(nul, have)
    printable = (rows >= 32) & (rows < 127)
    bad = np.where(~printable & (cols[None, :] < end[:, None]), 1, 0).sum(axis=1)
    # a pointer's low bytes can spell text ("0TxlYU" and two NULs): a first word that points
    # into the address space is a pointer, not the start of a string
    maps = session.mem.mappings()
    starts = np.array([m.start for m in maps] or [0], np.uint64)
    ends = np.array([m.end for m in maps] or [0], np.uint64)
    at = np.maximum(np.searchsorted(starts, words, side="right") - 1, 0)
    pointer = (have >= 8) & (words != 0) & (words >= starts[at]) & (words < ends[at])
    text = (end >= 4) & (bad == 0) & ~pointer
    out = [""] * n
    for k in np.flatnonzero(text).tolist():
        more = "..." if end[k] == have[k] and sizes[k] > have[k] else ""
        out[k] = '"' + rows[k, :end[k]].tobytes().decode("ascii") + more + '"'
    for k, w in enumerate(words.tolist()):
        if names.get(w):
            out[k] = names[w]
    return out


def demangle_vtable(sym: str) -> str | None:
    """The class of an Itanium `_ZTV` vtable symbol: `_ZTV6Widget` -> Widget,
    `_ZTVN2ns6WidgetE` -> ns::Widget."""
    s = sym[4:]
    nested = s.startswith("N")
    if nested:
        s = s[1:]
    parts = []
    while s and s[0].isdigit():
        n = 0
        while s and s[0].isdigit():
            n, s = n * 10 + int(s[0]), s[1:]
        if n > len(s):
            return None
        parts.append(s[:n])
        s = s[n:]
        if not nested:
            break
    if not parts or (nested and not s.startswith("E")):
        return None
    return "::".join(parts)
