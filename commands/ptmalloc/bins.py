"""The free lists: each thread's tcache, each arena's fastbins, unsorted, small and large bins.

Every walk is bounded (by the bin's count where glibc keeps one, else by a fixed limit) and
cycle-safe (a visited set: a chunk seen twice ends the walk as a cycle). Safe-linked links
(tcache next, fastbin fd, glibc 2.32+) are decoded with the address each is stored at. A link
that is misaligned, unmapped or outside the heaps ends its list instead of wandering through
memory; a doubly linked bin whose fd walk ends so is walked on backwards along bk from the bin.
What a walk meets (and a chunk in the wrong size class, a bk that disagrees, a tcache key
overwritten) is a Damage (damage.py) naming the chunk whose link or header is at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collections import Counter

from mdbpy.errors import ReadError
from mdbpy.heap.damage import Damage
from mdbpy.heap.model import FREE

from .damage import arena_owner, pointer_fault, tcache_owner
from .layouts import (NBINS, NFASTBINS, NSMALLBINS, ROLE_TCACHE_STRUCT, ROLE_TOP, SIZE_BITS,
                      TCACHE_SMALL_BINS, V_NUM_SLOTS, V_RANDOM_KEY, V_TCACHE_KEY)

MAX_LIST = 1 << 20  # chunks followed in one list at most
MINSIZE = 32
MAX_CHUNK = 1 << 40  # no heap chunk is larger: a size beyond is garbage


@dataclass
class BinList:
    """One free list: its kind and index, the chunk addresses in list order, its problems."""

    kind: str  # 'tcache', 'fastbin', 'unsorted', 'smallbin', 'largebin'
    index: int
    head: int  # where the list starts (entries[i] slot, fastbinsY[i] slot, or the bin)
    chunks: list[int] = field(default_factory=list)
    count: int | None = None  # what glibc's own counter says (tcache)
    owner: int = 0  # the tcache or arena address
    problems: list = field(default_factory=list)  # [Damage] met on the walk

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
    """Reads the lists of one located State (see locate.py). `chunks`, when given, is the
    heap walk's chunk table (addr, size, state and bad columns in address order, as
    table.chunk_table builds it): the singly linked lists then check that each entry is
    a chunk of the walk, not a place inside one."""

    def __init__(self, session, state, chunks=None):
        self.mem = session.mem
        self.state = state
        self.heaps = sorted(state.heap_ranges())
        self._bins: dict[int, tuple] = {}  # arena -> its bins[] (decoded once)
        self.chunks = chunks
        self._cached: dict[int, str] = {}  # chunk -> the tcache or fastbin list it is in

    def in_heap(self, addr: int) -> bool:
        return any(a <= addr < b for a, b in self.heaps)

    def _reveal(self, slot: int, stored: int) -> int:
        return stored ^ (slot >> 12) if self.state.safe_linking else stored

    def _size(self, chunk: int) -> int:
        return self.mem.read_u64(chunk + 8) & ~SIZE_BITS

    def _extent(self, chunk: int) -> tuple[int, int]:
        """[chunk, chunk + size) as far as a link walk may trust its size, else its header
        and links (32 bytes)."""
        try:
            size = self._size(chunk)
        except ReadError:
            size = 0
        ok = MINSIZE <= size <= MAX_CHUNK and not size & 15 and self.in_heap(chunk + size - 1)
        return chunk, chunk + (size if ok else MINSIZE)

    def _damage(self, lst: BinList, addr: int, text: str, holder: int | None) -> None:
        """Record one problem of lst; holder is the chunk whose link or header is at fault
        (None: the list head), the memory that is not trusted."""
        start, end = (lst.head, lst.head + 8) if holder is None else self._extent(holder)
        owner = tcache_owner(lst.owner) if lst.kind == "tcache" else arena_owner(lst.owner)
        lst.problems.append(Damage(owner, addr, f"{lst.name}: {text}", start, end))

    def _single(self, lst: BinList, first: int, user: bool, limit: int) -> BinList:
        """Follow a singly linked list (tcache: links to user memory; fastbin: to chunks),
        at most limit chunks, each once. An entry that is not a chunk of the heap walk but
        lies inside one (a chunk freed twice after a merge, a poisoned link) is reported and
        not listed; the walk goes on through its link, so the real chunks after it stay
        free, and says nothing more of this list (what follows came through the damage)."""
        seen = set()
        cur, holder = first, None
        cls = chunk_size_class(lst.kind, lst.index)
        quiet = False

        def damage(addr: int, text: str, at: int | None) -> None:
            if not quiet:
                self._damage(lst, addr, text, at)

        while cur and len(lst.chunks) < limit:
            chunk = cur - 16 if user else cur
            fault = pointer_fault(self.mem, chunk, self.heaps)
            if fault:
                damage(holder or lst.head, f"link 0x{cur:x} {fault}", holder)
                return lst
            if chunk in seen:
                damage(chunk, f"cycle at 0x{chunk:x} (double free?)", holder)
                return lst
            seen.add(chunk)
            inside = self._inside(chunk)
            if inside:
                damage(chunk, f"chunk 0x{chunk:x} lies inside {inside} (overlapping chunks: "
                              "a double free or a poisoned link)", chunk)
                quiet = True
            try:
                size = self._size(chunk)
                stored = self.mem.read_ptr(chunk + 16)
            except ReadError:
                damage(chunk, f"chunk 0x{chunk:x} is unreadable", holder)
                return lst
            if not inside:
                lst.chunks.append(chunk)
                self._cached.setdefault(chunk, lst.name)
            if cls and not cls[0] <= size < cls[1]:
                damage(chunk, f"chunk size 0x{size:x} does not belong in this bin "
                              f"(0x{cls[0]:x})", chunk)
            holder, cur = chunk, self._reveal(chunk + 16, stored)
        if cur and lst.count is None:
            damage(holder, f"longer than {limit} chunks; the rest is not walked", holder)
        return lst

    def tcache(self, tc) -> list[BinList]:
        """The bins of the tcache_perthread_struct at tc.addr (non-empty or miscounted). A
        bin's count (2.42: its num_slots, the free slots left) can never exceed
        mp_.tcache_count: glibc stops filling a bin there."""
        st = self.state
        tp = st.structs["tcache_perthread_struct"]
        v = tp.view(self.mem, tc.addr)
        entries = v.entries
        limit = st.mp.tcache_count if st.mp is not None else None
        if st.version >= V_NUM_SLOTS:
            field, raw = "num_slots", list(v.num_slots)
            counts = [max(limit - s, 0) if limit else None for s in raw]
        else:
            field, raw = "count", list(v.counts)
            counts = raw
        out = []
        for i, head in enumerate(entries):
            cnt = counts[i]
            over = limit is not None and raw[i] > limit
            if not head and not cnt and not over:
                continue
            lst = BinList("tcache", i, tc.addr + tp.offset("entries") + 8 * i, count=cnt,
                          owner=tc.addr)
            if over:
                self._damage(lst, lst.head, f"{field} {raw[i]} is above mp_.tcache_count "
                                            f"{limit}", None)
            self._single(lst, head, True, min((cnt or 0) + 1, MAX_LIST) if cnt is not None
                         else MAX_LIST)
            if cnt is not None and len(lst.chunks) != cnt and not lst.problems:
                self._damage(lst, lst.head, f"count says {cnt} but the list has "
                                            f"{len(lst.chunks)}", None)
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
        each chunk's bk against its predecessor. When the fd walk meets damage, the rest is
        recovered backwards along bk from the bin, up to a chunk already seen."""
        bins = self._bins.get(arena.addr)
        if bins is None:
            bins = self._bins[arena.addr] = arena.state.bins
        b = self.bin_at(arena, i)
        fd, bk = bins[2 * i - 2], bins[2 * i - 1]
        kind = "unsorted" if i == 1 else "smallbin" if i < NSMALLBINS else "largebin"
        lst = BinList(kind, i, b, owner=arena.addr)
        if fd == b:
            if bk != b:
                self._damage(lst, b, f"fd says empty but bk is 0x{bk:x}", None)
                return lst
            return None
        seen: set[int] = set()
        if not self._forward(lst, b, fd, seen):
            tail = self._backward(lst, b, bk, seen)
            lst.chunks += tail[::-1]
        elif bk != lst.chunks[-1]:
            self._damage(lst, b, f"the bin's bk 0x{bk:x} should be 0x{lst.chunks[-1]:x} "
                                 "(broken double link)", None)
        elif lst.kind == "largebin" and not lst.problems:
            self._sorted(lst)
        return lst

    def _sorted(self, lst: BinList) -> None:
        """A large bin is sorted by size, largest first along fd, and the first chunk of each
        size is on the nextsize ring: fd_nextsize leads to the first chunk of the next smaller
        size (the smallest back to the largest), bk_nextsize the other way; glibc clears
        fd_nextsize in the other chunks (its unlink takes a chunk with fd_nextsize set for a
        member of the ring, and a large bin attack works by bending these links). One report
        per bin: the first chunk out of order, else the first wrong link (one that leaves the
        heaps first, the attacker's pointer), with how many others are wrong."""
        off = self.state.structs["malloc_chunk"].offset("fd_nextsize")
        rows = []
        for c in lst.chunks:
            try:
                rows.append((c, self._size(c), *self.mem.unpack("QQ", c + off)))
            except ReadError:
                return  # an unreadable chunk: the fd walk has said so
        for (p, psize, _, _), (c, size, _, _) in zip(rows, rows[1:]):
            if size > psize:
                self._damage(lst, c, f"chunk 0x{c:x} (size 0x{size:x}) is larger than chunk "
                                     f"0x{p:x} (size 0x{psize:x}) before it: the bin is out "
                                     "of size order", c)
                return
        heads = [r[0] for i, r in enumerate(rows) if i == 0 or r[1] != rows[i - 1][1]]
        ring = {c: (heads[(k + 1) % len(heads)], heads[k - 1]) for k, c in enumerate(heads)}
        wrong = []  # (leaves the heaps, chunk, link, value, expected)
        for c, _size, fdn, bkn in rows:
            want = ring.get(c, (0, None))
            for name, value, expect in (("fd_nextsize", fdn, want[0]),
                                        ("bk_nextsize", bkn, want[1])):
                if expect is not None and value != expect:
                    wrong.append((bool(value) and not self.in_heap(value), c, name, value,
                                  expect))
        if wrong:
            _, c, name, value, expect = next((w for w in wrong if w[0]), wrong[0])
            others = len(wrong) - 1
            more = f"; {others} more nextsize link{'s' if others > 1 else ''} wrong" \
                if others else ""
            self._damage(lst, c, f"{name} 0x{value:x} of chunk 0x{c:x} should be "
                                 f"0x{expect:x} (broken nextsize links{more})", c)

    def _inside(self, chunk: int) -> str | None:
        """What chunk lies inside when it is not a chunk of the heap walk ("the free chunk
        0x... (in unsorted)", "the in-use chunk 0x..."), else None (also without the walk,
        or inside a chunk whose header the walk could not use: that is reported already)."""
        t = self.chunks
        if t is None or not len(t.addr):
            return None
        import numpy as np

        k = int(np.searchsorted(t.addr, np.uint64(chunk), side="right")) - 1
        if k < 0 or int(t.addr[k]) == chunk or t.bad[k]:
            return None
        y = int(t.addr[k])
        if chunk >= y + int(t.size[k]):
            return None
        if y in self._cached:
            return f"the free chunk 0x{y:x} (in {self._cached[y]})"
        return {FREE: "the free chunk", ROLE_TOP: "the top chunk",
                ROLE_TCACHE_STRUCT: "the tcache_perthread_struct chunk"}.get(
                    int(t.state[k]), "the in-use chunk") + f" 0x{y:x}"

    def _forward(self, lst: BinList, b: int, fd: int, seen: set) -> bool:
        """Walk fd from the bin; True when it came back to the bin."""
        prev, cur = b, fd
        cls = chunk_size_class(lst.kind, lst.index)
        holder = None
        while cur != b:
            if len(lst.chunks) >= MAX_LIST:
                self._damage(lst, prev, f"longer than {MAX_LIST} chunks; the rest is not "
                                        "walked", holder)
                return False
            if cur in seen:
                self._damage(lst, cur, f"cycle at 0x{cur:x}", holder)
                return False
            fault = pointer_fault(self.mem, cur, self.heaps)
            if fault:
                what = f"the bin's fd 0x{cur:x}" if holder is None else \
                    f"fd 0x{cur:x} of chunk 0x{prev:x}"
                self._damage(lst, prev, f"{what} {fault}", holder)
                return False
            seen.add(cur)
            try:
                size = self._size(cur)
                nfd, nbk = self.mem.unpack("QQ", cur + 16)
            except ReadError:
                self._damage(lst, cur, f"chunk 0x{cur:x} is unreadable", holder)
                return False
            lst.chunks.append(cur)
            if nbk != prev:
                self._damage(lst, cur, f"bk 0x{nbk:x} should be 0x{prev:x} (broken double "
                                       "link)", cur)
            if cls and not cls[0] <= size < cls[1]:
                self._damage(lst, cur, f"chunk size 0x{size:x} does not belong in this bin",
                             cur)
            if lst.kind == "largebin" and largebin_index(size) != lst.index:
                self._damage(lst, cur, f"chunk size 0x{size:x} belongs in "
                                       f"largebin[{largebin_index(size)}]", cur)
            prev, cur, holder = cur, nfd, cur
        return True

    def _backward(self, lst: BinList, b: int, bk: int, seen: set) -> list[int]:
        """The chunks reached along bk from the bin before one already seen or one that
        cannot be a chunk (that stop needs no report: the fd walk has reported the damage)."""
        out = []
        cur = bk
        while cur != b and cur not in seen and len(lst.chunks) + len(out) < MAX_LIST:
            if pointer_fault(self.mem, cur, self.heaps):
                break
            try:
                cur_bk = self.mem.read_ptr(cur + 24)
            except ReadError:
                break
            seen.add(cur)
            out.append(cur)
            cur = cur_bk
        return out

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
                out.append(BinList("tcache", -1, tc.addr, owner=tc.addr, problems=[
                    Damage(tcache_owner(tc.addr), tc.addr, f"unreadable: {e}", tc.addr,
                           tc.addr + self.state.tcache_chunk_size - 16)]))
        for a in self.state.arenas:
            out += self.arena_bins(a)
        return out

    def tcache_keys(self, lists: list[BinList]) -> list[Damage]:
        """Each tcache entry's key must be the tcache's address (2.29 .. 2.33) or libc's
        random tcache_key (2.34+; without symbols, the key most entries hold): another value
        is a write into a free chunk."""
        st = self.state
        if st.version < V_TCACHE_KEY:
            return []
        keys = {}
        for lst in lists:
            if lst.kind != "tcache":
                continue
            for c in lst.chunks:
                try:
                    keys[c] = (self.mem.read_u64(c + 24), lst)
                except ReadError:
                    continue
        common = st.tcache_key
        if st.version >= V_RANDOM_KEY and common is None and keys:
            common = Counter(k for k, _ in keys.values()).most_common(1)[0][0]
        out = []
        for c, (key, lst) in keys.items():
            want = common if st.version >= V_RANDOM_KEY else lst.owner
            if want is None or key == want:
                continue
            diff = next(i for i in range(8) if (key >> 8 * i) & 0xFF != (want >> 8 * i) & 0xFF)
            start, end = self._extent(c)
            out.append(Damage(tcache_owner(lst.owner), c,
                              f"chunk 0x{c:x} in {lst.name}: tcache key overwritten (use "
                              f"after free?), first bad byte at 0x{c + 24 + diff:x}", start, end))
        return out
