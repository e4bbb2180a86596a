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

from mdbpy.heap.arrays import distinct
from mdbpy.heap.model import (ALLOC, FREE, KIND_BUFFER, KIND_OVERSIZE, Allocator, BufferTable,
                              Problem)

from .arenas import MALLOC_ALIGNMENT
from .layouts import HEAP_MAX_SIZE
from .locate import locate
from .table import ChunkTable, chunk_table
from .verify import verify

HINT_BYTES = 32
MIN_USABLE = 24  # MINSIZE (32) less the size word: the smallest chunk's usable size
# the most a rest under MINSIZE, kept by realloc shrinking in place or memalign trimming, adds
# to a chunk beyond what its request needs (a rest is a multiple of MALLOC_ALIGNMENT)
KEPT_REST = MALLOC_ALIGNMENT


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
        addr = t.addr[keep]
        mm = t.mmapped[keep]
        base = addr + np.uint64(16)
        usable = t.size[keep]
        sizes, group = size_classes(usable)
        # usable sizes written over the chunk sizes once they are grouped: a copy fewer
        usable -= np.uint64(8)
        usable[mm] -= np.uint64(8)
        table = BufferTable.from_columns(
            base, usable, t.state[keep], group, addr,
            np.where(mm, np.uint8(KIND_OVERSIZE), np.uint8(KIND_BUFFER)),
            groups=sizes.tolist(), sort=False)
        self._buffers = (t, table)
        return table

    def request_sizes(self, table: BufferTable):
        """The requests each chunk could be serving, by malloc.c: a chunk of size
        max(MINSIZE, (req + SIZE_SZ + MALLOC_ALIGN_MASK) & ~MALLOC_ALIGN_MASK) serves req, so
        usable size u (chunk - 8) serves [u - 15, u]; but realloc shrinking a chunk in place,
        and memalign trimming one, split off the rest only when it is at least MINSIZE (32), so
        such a chunk may be 16 bytes larger than its request needs: u serves [u - 31, u], and
        the 32-byte minimum chunk (u 24) [0, 24]. Nothing in the heap tells those chunks apart,
        so the wider range is the one that holds for every chunk. An mmapped chunk's (rounded
        to pages, and to hugepages by a tunable): unknown."""
        import numpy as np

        u = table.size
        lo = np.where(u <= np.uint64(MIN_USABLE + KEPT_REST), np.uint64(0),
                      u - np.uint64(MALLOC_ALIGNMENT - 1 + KEPT_REST))
        hi = np.where(table.kind == KIND_BUFFER, u, np.uint64(0))
        return lo, hi

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

    q = (size >> np.uint64(4)).view(np.int64)  # below 2**60: the same numbers
    if not len(q) or int(q.max()) >= 1 << 22 or np.any(size & np.uint64(15)):
        sizes, group = np.unique(size, return_inverse=True)
        return sizes, group.astype(np.int32).reshape(-1)
    seen = np.bincount(q) > 0
    index = (np.cumsum(seen) - 1).astype(np.int32)
    return np.flatnonzero(seen).astype(np.uint64) << np.uint64(4), index[q]


def type_hints(session, addrs, sizes) -> list[str]:
    """Per buffer: 'Widget' for a C++ object whose first word is a vtable of class Widget,
    '"text..."' for a printable prefix that is not a pointer's bytes, else ''. The first
    HINT_BYTES of every buffer are read in one gather; symbols are looked up once per distinct
    first word that lies in a loaded object (a vtable is in one), and text is decoded only
    where the bytes are printable."""
    import numpy as np

    from mdbpy.heap.gather import session_gather

    n = len(addrs)
    rows, ok = session_gather(session).rows(addrs, HINT_BYTES)
    have = np.minimum(np.asarray(sizes, np.int64), HINT_BYTES)
    have[~ok] = 0
    cols = np.arange(HINT_BYTES)
    inside = cols[None, :] < have[:, None]
    words = np.where(have >= 8, rows[:, :8].copy().view("<u8")[:, 0], 0)
    names: dict[int, str] = {}
    objs = [(o.base, o.end) for o in session.symbols.objects()]
    for w in distinct(words[words != 0]).tolist():
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
