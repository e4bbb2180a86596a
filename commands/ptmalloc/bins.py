"""The free lists: each thread's tcache, each arena's fastbins, unsorted, small and large bins.

Every walk is bounded (by the bin's count where glibc keeps one, else by a fixed limit) and
cycle-safe (a chunk seen twice ends the walk and is reported as a double free or a cycle).
Safe-linked links (tcache next, fastbin fd, glibc 2.32+) are decoded with the address each is
stored at. A link that leaves the heaps, or a chunk in the wrong size class, ends its list with
a problem instead of wandering through memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import ReadError

from .layouts import NBINS, NFASTBINS, NSMALLBINS, SIZE_BITS, TCACHE_SMALL_BINS, V_NUM_SLOTS

MAX_LIST = 1 << 20  # chunks followed in one list at most


@dataclass
class BinList:
    """One free list: its kind and index, the chunk addresses in list order, its problems."""

    kind: str  # 'tcache', 'fastbin', 'unsorted', 'smallbin', 'largebin'
    index: int
    head: int  # where the list starts (entries[i] slot, fastbinsY[i] slot, or the bin)
    chunks: list[int] = field(default_factory=list)
    count: int | None = None  # what glibc's own counter says (tcache)
    owner: int = 0  # the tcache or arena address
    problems: list = field(default_factory=list)  # [(chunk or slot address, message)]

    @property
    def name(self) -> str:
        return self.kind if self.kind == "unsorted" else f"{self.kind}[{self.index}]"


def chunk_size_class(kind: str, index: int) -> tuple[int, int] | None:
    """[lo, hi) of the chunk sizes a bin may hold (None: any size, e.g. unsorted)."""
    if kind == "tcache" and index < TCACHE_SMALL_BINS:
        return (32 + 16 * index, 48 + 16 * index)
    if kind == "fastbin":
        return (32 + 16 * index, 48 + 16 * index)
    if kind == "smallbin":
        return (16 * index, 16 * index + 16)
    return None


def largebin_index(size: int) -> int:
    """glibc's largebin_index_64."""
    if (size >> 6) <= 48:
        return 48 + (size >> 6)
    if (size >> 9) <= 20:
        return 91 + (size >> 9)
    if (size >> 12) <= 10:
        return 110 + (size >> 12)
    if (size >> 15) <= 4:
        return 119 + (size >> 15)
    if (size >> 18) <= 2:
        return 124 + (size >> 18)
    return 126


class Walker:
    """Reads the lists of one located State (see locate.py)."""

    def __init__(self, session, state):
        self.mem = session.mem
        self.state = state
        self.heaps = sorted(state.heap_ranges())

    def in_heap(self, addr: int) -> bool:
        return any(a <= addr < b for a, b in self.heaps)

    def _reveal(self, slot: int, stored: int) -> int:
        return stored ^ (slot >> 12) if self.state.safe_linking else stored

    def _size(self, chunk: int) -> int:
        return self.mem.read_u64(chunk + 8) & ~SIZE_BITS

    def _single(self, lst: BinList, first: int, user: bool, limit: int) -> BinList:
        """Follow a singly linked list (tcache: links to user memory; fastbin: to chunks)."""
        seen = set()
        cur = first
        cls = chunk_size_class(lst.kind, lst.index)
        while cur and len(lst.chunks) < limit:
            chunk = cur - 16 if user else cur
            if cur & 15:
                lst.problems.append((chunk, f"{lst.name}: misaligned link 0x{cur:x}"))
                break
            if not self.in_heap(chunk):
                lst.problems.append((chunk, f"{lst.name}: link 0x{cur:x} points outside "
                                            "the heaps"))
                break
            if chunk in seen:
                lst.problems.append((chunk, f"{lst.name}: chunk 0x{chunk:x} is in the list "
                                            "twice (double free)"))
                break
            seen.add(chunk)
            try:
                size = self._size(chunk)
                stored = self.mem.read_ptr(chunk + 16)
            except ReadError:
                lst.problems.append((chunk, f"{lst.name}: chunk 0x{chunk:x} is unreadable"))
                break
            lst.chunks.append(chunk)
            if cls and not cls[0] <= size < cls[1]:
                lst.problems.append((chunk, f"{lst.name}: chunk size 0x{size:x} does not "
                                            f"belong in this bin (0x{cls[0]:x})"))
            cur = self._reveal(chunk + 16, stored)
        return lst

    def tcache(self, tc) -> list[BinList]:
        """The bins of the tcache_perthread_struct at tc.addr (non-empty or miscounted)."""
        st = self.state
        tp = st.structs["tcache_perthread_struct"]
        v = tp.view(self.mem, tc.addr)
        entries = v.entries
        if st.version >= V_NUM_SLOTS:
            limit = st.mp.tcache_count if st.mp is not None else 0
            counts = [max(limit - s, 0) if limit else None for s in v.num_slots]
        else:
            counts = list(v.counts)
        out = []
        for i, head in enumerate(entries):
            cnt = counts[i]
            if not head and not cnt:
                continue
            lst = BinList("tcache", i, tc.addr + tp.offset("entries") + 8 * i, count=cnt,
                          owner=tc.addr)
            self._single(lst, head, True, min((cnt or 0) + 1, MAX_LIST) if cnt is not None
                         else MAX_LIST)
            if cnt is not None and len(lst.chunks) != cnt and not lst.problems:
                lst.problems.append((lst.head, f"{lst.name}: count says {cnt} but the list "
                                               f"has {len(lst.chunks)}"))
            out.append(lst)
        return out

    def fastbins(self, arena) -> list[BinList]:
        ms = self.state.structs["malloc_state"]
        out = []
        for i, head in enumerate(arena.state.fastbinsY[:NFASTBINS]):
            if not head:
                continue
            lst = BinList("fastbin", i, arena.addr + ms.offset("fastbinsY") + 8 * i,
                          owner=arena.addr)
            out.append(self._single(lst, head, False, MAX_LIST))
        return out

    def bin_at(self, arena, i: int) -> int:
        """The fake chunk whose fd/bk are bins[2i-2], bins[2i-1] (glibc's bin_at)."""
        return arena.addr + self.state.structs["malloc_state"].offset("bins") + 16 * (i - 1) - 16

    def doubly(self, arena, i: int) -> BinList | None:
        """Bin i (1: unsorted, 2..63 small, 64..126 large) of an arena, fd order, checking
        each chunk's bk against its predecessor."""
        bins = arena.state.bins
        b = self.bin_at(arena, i)
        fd = bins[2 * i - 2]
        if fd == b:
            return None
        kind = "unsorted" if i == 1 else "smallbin" if i < NSMALLBINS else "largebin"
        lst = BinList(kind, i, b, owner=arena.addr)
        prev, cur = b, fd
        seen = set()
        cls = chunk_size_class(kind, i)
        while cur != b and len(lst.chunks) < MAX_LIST:
            if cur in seen:
                lst.problems.append((cur, f"{lst.name}: chunk 0x{cur:x} is in the list twice"))
                break
            if cur & 15 or not self.in_heap(cur):
                lst.problems.append((prev, f"{lst.name}: fd 0x{cur:x} points outside the "
                                           "heaps"))
                break
            seen.add(cur)
            try:
                size = self._size(cur)
                nfd, nbk = self.mem.unpack("QQ", cur + 16)
            except ReadError:
                lst.problems.append((cur, f"{lst.name}: chunk 0x{cur:x} is unreadable"))
                break
            lst.chunks.append(cur)
            if nbk != prev:
                lst.problems.append((cur, f"{lst.name}: bk 0x{nbk:x} should be 0x{prev:x} "
                                          "(broken double link)"))
            if cls and not cls[0] <= size < cls[1]:
                lst.problems.append((cur, f"{lst.name}: chunk size 0x{size:x} does not "
                                          "belong in this bin"))
            if kind == "largebin" and largebin_index(size) != i:
                lst.problems.append((cur, f"{lst.name}: chunk size 0x{size:x} belongs in "
                                          f"largebin[{largebin_index(size)}]"))
            prev, cur = cur, nfd
        return lst

    def arena_bins(self, arena) -> list[BinList]:
        out = self.fastbins(arena)
        for i in range(1, NBINS - 1):
            lst = self.doubly(arena, i)
            if lst is not None:
                out.append(lst)
        return out

    def all(self) -> list[BinList]:
        out = []
        for tc in self.state.tcaches:
            try:
                out += self.tcache(tc)
            except ReadError as e:
                out.append(BinList("tcache", -1, tc.addr, owner=tc.addr,
                                   problems=[(tc.addr, f"tcache unreadable: {e}")]))
        for a in self.state.arenas:
            out += self.arena_bins(a)
        return out
