"""The chunk walk: every chunk of every heap, as numpy columns, fast and robust to damage.

A heap is walked in windows of WINDOW bytes, so a heap of many GiB costs one window of memory
plus the columns of the chunks found, never its own size. A window is read in one block and
viewed as 16-byte slots; for every slot the index of the slot its size field would lead to is
computed at once (numpy), with -1 where that size is not a chunk size (below MINSIZE,
misaligned, past the heap's end). The walk itself, sequential by nature, is a tight loop over a
memoryview of that array: one index and one append per chunk. A chunk that leads past the
window starts the next window at the header it leads to, so the inside of a big chunk is never
read. A bad size is reported and the walk resynchronises on the next slot whose size leads to
another valid header (or exactly to the heap's end), so one smashed header never hides the rest
of the heap; that search goes on window by window, and a header it must look at beyond the
window is read in a small block of its own.

Mmapped chunks are found separately, by their headers, in runs of adjacent anonymous mappings
of any permissions (mprotect splits a chunk's mapping, the kernel merges it with its
neighbours: neither is one mapping per chunk), chained from one chunk's end to the next header
and checked against glibc's own count (mp_.n_mmaps, mp_.mmapped_mem).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from mdbpy.errors import ReadError
from mdbpy.heap import kernel
from mdbpy.heap.anon import AnonRun, anon_runs
from mdbpy.heap.gather import Gather

from .layouts import IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE, SIZE_BITS

MINSIZE = 32
PAGE = 4096
MAX_MMAP_SCAN_PAGES = 1 << 16  # page starts looked at per run of anonymous mappings
PROBE_WINDOW = 256  # page starts read at once where the chain of mmapped chunks breaks
MAX_CHUNK = 1 << 40  # no heap chunk is larger: a size beyond is garbage
# Heap bytes read and indexed at once (a multiple of 16). 1 MiB was the fastest on a dense
# heap of 48-byte chunks (92 MiB: 0.55 s; 64 MiB windows 1.06 s, one window 1.85 s) and
# lets a heap of big chunks be walked reading little more than their headers (1.5 GiB of
# 1 MiB chunks: 2.1 s; 64 MiB windows 11 s).
WINDOW = 1 << 20
PEEK_SLOTS = 256  # slots read around a header looked at beyond the window
MAX_PEEKS = 64  # such blocks kept at once


@dataclass
class HeapWalk:
    """The chunks of one heap: addresses, sizes and flag bits in address order."""

    addr: object  # np.ndarray uint64: chunk addresses
    size: object  # np.ndarray uint64: chunk sizes (for a damaged chunk, up to the resync)
    flags: object  # np.ndarray uint8: the size field's low 3 bits
    next_prev_inuse: object  # np.ndarray bool: the following header's PREV_INUSE bit
    problems: list = field(default_factory=list)  # [(chunk, resume address, message)]
    bad: object = None  # np.ndarray bool: chunks whose size field was not usable
    # [start, end) of each foreign block between runs of chunks of the main heap: the
    # memory after a double fencepost, up to where glibc's chunks start again
    foreign: list = field(default_factory=list)


def _next_slots(raw, lo: int, end_slot: int):
    """For the size words of slots lo, lo + 1, ...: the slot each leads to, or -1 for an
    impossible size."""
    import numpy as np

    size = raw & np.uint64(~SIZE_BITS & 0xFFFFFFFFFFFFFFFF)
    bad = (size < MINSIZE) | ((size & np.uint64(15)) != 0) | (size > np.uint64(MAX_CHUNK))
    nxt = (size >> np.uint64(4)).view(np.int64)  # below 2**36 where not bad: no overflow
    del size
    nxt += np.arange(lo, lo + len(raw), dtype=np.int64)
    bad |= nxt > end_slot
    nxt[bad] = -1
    return nxt


class _Slots:
    """The slots of one heap as the walk sees them: the current window's size words and
    where each leads, plus small blocks read around headers looked at beyond the window."""

    def __init__(self, mem, first: int, nslots: int, progress=None):
        self.mem, self.first, self.end = mem, first, nslots
        self.progress = progress
        self.lo = self.hi = 0
        self.words = self.raw = self._nxt = None
        self.peeks: dict[int, object] = {}  # block number -> that block's next slots

    def load(self, lo: int) -> None:
        """Make the window start at slot lo."""
        import numpy as np

        if self.progress is not None:
            self.progress(16 * lo, 16 * self.end)
        hi = min(lo + max(WINDOW // 16, 1), self.end)
        self.words = self.raw = self._nxt = None  # the old window goes before the new is read
        data = self.mem.read(self.first + 16 * lo, 16 * (hi - lo))
        self.words = np.frombuffer(data, dtype="<u8")
        self.raw = self.words[1::2]
        self.lo, self.hi = lo, hi

    @property
    def nxt(self):
        """Where each slot of the window leads (_next_slots): decoded only when the walk
        looks past a broken chain; the chain itself is followed in kernel.c (follow)."""
        if self._nxt is None:
            self._nxt = _next_slots(self.raw, self.lo, self.end)
        return self._nxt

    def follow(self, k: int, out, stop) -> int:
        """The chain of chunks from slot k through the window, into out (kernel.c's
        follow_sizes; stop[0] is where it stopped); how many slots were written."""
        return kernel.lib().follow_sizes(kernel.ptr(self.words), self.lo, self.hi, k, self.end,
                                         MINSIZE, MAX_CHUNK, kernel.ptr(out), kernel.ptr(stop))

    def leads(self, k: int) -> int:
        """Where slot k's size leads (-1: nowhere), from the window or from a block of
        PEEK_SLOTS slots read around it."""
        if self.lo <= k < self.hi:
            return int(self.nxt[k - self.lo])
        import numpy as np

        b = k // PEEK_SLOTS
        nxt = self.peeks.get(b)
        if nxt is None:
            lo, hi = b * PEEK_SLOTS, min((b + 1) * PEEK_SLOTS, self.end)
            data = self.mem.read(self.first + 16 * lo, 16 * (hi - lo))
            nxt = _next_slots(np.frombuffer(data, dtype="<u8")[1::2], lo, self.end)
            if len(self.peeks) >= MAX_PEEKS:
                self.peeks.clear()
            self.peeks[b] = nxt
        return int(nxt[k - b * PEEK_SLOTS])

    def word(self, k: int) -> int:
        """The size word of slot k, from the window or read on its own."""
        if self.lo <= k < self.hi:
            return int(self.raw[k - self.lo])
        return int.from_bytes(self.mem.read(self.first + 16 * k + 8, 8), "little")

    def run_to_end(self, k: int) -> int:
        """The first slot from k on whose chain of sizes leads exactly to the end (the top):
        where glibc's chunks start again after a foreign block. The end itself when none
        does (the new top is the block's only chunk). Each slot's chain is followed once:
        the slots of a chain that dies are remembered."""
        import numpy as np

        dead: set[int] = set()
        while k < self.end:
            if not self.lo <= k < self.hi:
                self.load(k)
            for c in (np.flatnonzero(self.nxt[k - self.lo:] >= 0) + k).tolist():
                path, x = [], c
                while 0 <= x < self.end and x not in dead:
                    path.append(x)
                    x = self.leads(x)
                if x == self.end:
                    return c
                dead.update(path)
            k = self.hi
        return self.end

    def resync(self, k: int) -> int:
        """The first slot after k whose size leads to the end or to another valid header;
        the end if none."""
        import numpy as np

        a = k + 1
        while a < self.end:
            if not self.lo <= a < self.hi:
                self.load(a)
            cand = self.nxt[a - self.lo:]
            ok = cand >= 0
            near = ok & (cand < self.hi)  # a valid size leads past its own slot: >= lo
            follow = self.nxt[np.where(near, cand - self.lo, 0)]
            good = (cand == self.end) | (near & (follow >= 0))
            hits = np.flatnonzero(good)
            stop = int(hits[0]) if len(hits) else len(cand)
            far = ok[:stop] & ~near[:stop] & (cand[:stop] != self.end)
            for i in np.flatnonzero(far).tolist():
                if self.leads(int(cand[i])) >= 0:
                    return a + i
            if len(hits):
                return a + stop
            a = self.hi
        return self.end


class _Found:
    """The chunk slots found so far: numpy parts of the windows left, and the parts of the
    current one (their size words are taken from the window before the window moves)."""

    def __init__(self):
        self.idx: list = []
        self.flags: list = []
        self.pending: list = []  # int64 arrays of slots in the current window
        self.npending = 0
        self.flushed = 0

    def __len__(self) -> int:
        return self.flushed + self.npending

    def add(self, slots) -> None:
        self.pending.append(slots)
        self.npending += len(slots)

    def flush(self, s: _Slots) -> None:
        import numpy as np

        if self.pending:
            part = np.concatenate(self.pending)
            self.idx.append(part)
            # the size word's flag bits are all a chunk keeps of it (its size is the distance
            # to the next chunk): one byte a chunk, not eight
            self.flags.append((s.raw[part - s.lo] & np.uint64(SIZE_BITS)).astype(np.uint8))
            self.flushed += len(part)
            self.pending, self.npending = [], 0

    def columns(self):
        """(slot indices, flag bits of the size words) of every chunk found, in address
        order; the parts are let go as they are joined."""
        import numpy as np

        if not self.idx:
            return np.zeros(0, np.int64), np.zeros(0, np.uint8)
        idx = self.idx[0] if len(self.idx) == 1 else np.concatenate(self.idx)
        self.idx = []
        flags = self.flags[0] if len(self.flags) == 1 else np.concatenate(self.flags)
        self.flags = []
        return idx, flags


def walk_heap(mem, first: int, end: int, top: int | None, progress=None) -> HeapWalk:
    """Chunks in [first, end); `top`, when given, is the chunk at `end` whose PREV_INUSE
    bit says whether the last chunk is in use. Without a top (an older heap of a thread
    arena), the walk stops at the fenceposts glibc leaves at the heap's end. With a top, a
    double fencepost (two 16-byte headers, the second with PREV_INUSE) is where glibc's
    brk heap stopped being contiguous: another sbrk user moved the break, and glibc's next
    sbrk started a new run of chunks past the foreign block. The walk goes on where a chain
    of chunks leads from again exactly to the top (_Slots.run_to_end); the fenceposts are
    not chunks of the table and the block between is `foreign`. progress, when given, is
    called as progress(bytes passed, bytes of the heap) at every window."""
    import numpy as np

    span = max(end - first, 0) & ~15
    nslots = span // 16
    # the top's header: its PREV_INUSE bit is the last chunk's state
    top_word = (int.from_bytes(mem.read(first + span, 16)[8:], "little")
                if top is not None else 1)
    s = _Slots(mem, first, nslots, progress)
    found = _Found()
    problems: list[tuple[int, int, str]] = []
    bad_at: list[int] = []
    foreign: list[tuple[int, int]] = []
    cut: dict[int, tuple[int, int]] = {}  # row before a fencepost -> (its slot, its word)
    k = 0
    stop = np.zeros(1, np.int64)
    # every step moves k forward (a valid size by 2 slots at least, a resync by 1 at least)
    # and never past nslots: the loop ends
    while k < nslots:
        if k >= s.hi:
            found.flush(s)
            s.load(k)
        lo, hi = s.lo, s.hi
        chain = np.empty(hi - k, np.int64)
        got = s.follow(k, chain, stop)
        found.add(chain[:got])
        k = int(stop[0])
        if k >= hi:
            continue  # the walk left the window
        rawk = int(s.raw[k - lo])
        if top is None and (rawk & ~SIZE_BITS == 16
                            or rawk == PREV_INUSE and k == nslots - 1):
            # the fencepost pair that closes an old thread heap; or, when the old top was
            # too small to free, glibc's last fencepost alone (size 0) in the heap's last slot
            break
        if (top is not None and rawk & ~SIZE_BITS == 16 and k + 1 < nslots
                and s.word(k + 1) == 16 | PREV_INUSE):
            if len(found):
                cut[len(found) - 1] = (k, rawk)
            found.flush(s)  # the search may move the window
            k2 = s.run_to_end(k + 2)
            foreign.append((first + 16 * (k + 2), first + 16 * k2))
            k = k2
            continue
        size = rawk & ~SIZE_BITS
        addr = first + 16 * k
        why = (f"chunk 0x{addr:x}: size 0x{size:x} runs past the "
               f"{'top chunk' if top else 'heap end'} at 0x{end:x}"
               if MINSIZE <= size <= MAX_CHUNK and not size & 15 else
               f"chunk 0x{addr:x}: bad size 0x{rawk:x} (smashed header?)")
        bad_at.append(len(found))
        found.add(np.array([k], np.int64))
        found.flush(s)  # the resync may move the window
        k2 = s.resync(k)
        if k2 < nslots:
            why += f"; walk resumes at 0x{first + 16 * k2:x}"
        problems.append((addr, first + 16 * k2, why))
        k = k2
    last_word = int(s.raw[k - s.lo]) if k < nslots else top_word  # the header after the walk
    found.flush(s)
    if progress is not None:
        progress(span, span)
    idx, flags = found.columns()
    # a chunk's size is the distance to the next chunk's slot (to the fencepost before a
    # foreign block, to where the walk ended for the last); its successor's PREV_INUSE bit
    # (the top's or fencepost's for the last and the cut) says whether it is in use. Computed
    # into the walk's own columns: a heap of four million chunks has no room for copies
    n = len(idx)
    sizes = np.empty(n, np.int64)
    npi = np.empty(n, bool)
    if n:
        np.subtract(idx[1:], idx[:-1], out=sizes[:-1])
        sizes[-1] = k - idx[-1]
        np.bitwise_and(flags[1:], PREV_INUSE, out=npi[:-1], casting="unsafe")
        npi[-1] = bool(last_word & PREV_INUSE)
        for row, (slot, word) in cut.items():
            sizes[row], npi[row] = slot - idx[row], bool(word & PREV_INUSE)
    sizes = sizes.view(np.uint64)
    sizes <<= np.uint64(4)
    addrs = idx.view(np.uint64)  # the slots become addresses in place
    addrs <<= np.uint64(4)
    addrs += np.uint64(first)
    bad = np.zeros(n, bool)
    if bad_at:
        bad[bad_at] = True
    return HeapWalk(addrs, sizes, flags, npi, problems, bad, foreign)


@dataclass
class MmapChunk:
    addr: int
    size: int
    prev_size: int

    @property
    def mapped(self) -> int:
        """The bytes glibc mmapped for it, as mp_.mmapped_mem counts them."""
        return self.prev_size + self.size


# Anonymous mappings that never hold a chunk of glibc's.
def _mmap_headers(q, prev, raw, end):
    """Where (prev_size, size word) at page starts q (numpy arrays) are the header of an
    mmapped chunk at q + prev_size that ends by `end`: IS_MMAPPED alone among the flag bits, a
    prev_size (glibc's alignment correction) below a page and 16-aligned, a 16-aligned size
    that makes prev_size + size a whole number of pages."""
    import numpy as np

    size = raw & np.uint64(~SIZE_BITS & 0xFFFFFFFFFFFFFFFF)
    ok = ((raw & np.uint64(SIZE_BITS)) == np.uint64(IS_MMAPPED)) & (prev < np.uint64(PAGE))
    ok &= ((prev | size) & np.uint64(15)) == 0
    ok &= (size > 0) & (size <= np.uint64(MAX_CHUNK))
    with np.errstate(over="ignore"):  # wraps only where not ok, and is dropped there
        span = np.where(ok, prev + size, np.uint64(0))
    ok &= ((span & np.uint64(PAGE - 1)) == 0) & (span <= np.uint64(end) - q)
    return ok


class _RunScan:
    """The mmapped chunks of one run: a chain from the run's first page, each chunk's end
    the next place a header is looked for (adjacent chunks merged into one mapping, a chunk
    next to other anonymous memory); where no header is, the next is looked for among the
    page starts that follow, PROBE_WINDOW of them read at once (mdbpy.heap.gather: one
    large read on a live process, slices of the image of a core). The inside of a chunk is
    never read. At most MAX_MMAP_SCAN_PAGES page starts are looked at per run. `thorough`
    looks at every page start, inside chunks too, and lets a chunk run past the run's end:
    what a smashed size hides (explain_mmap_count)."""

    def __init__(self, mem, run: AnonRun, thorough: bool = False):
        self.mem, self.run = mem, run
        self.thorough = thorough
        self.bound = (1 << 64) - 1 if thorough else run.end  # where a chunk must end by
        self.budget = MAX_MMAP_SCAN_PAGES
        self.win = None  # (first page, prev words, size words, ok mask) of the last window
        self.ends = [b for _a, b in run.readable]
        self.gather = Gather(mem)

    def _part(self, q: int):
        """The readable part holding q or, failing that, the next one; None past them all."""
        i = bisect.bisect_right(self.ends, q)
        return self.run.readable[i] if i < len(self.ends) else None

    def _window(self, q: int, stop: int) -> None:
        import numpy as np

        n = max(min((stop - q) // PAGE, PROBE_WINDOW, self.budget), 1)
        self.budget -= n
        pages = np.uint64(q) + np.arange(n, dtype=np.uint64) * np.uint64(PAGE)
        rows, ok = self.gather.rows(pages, 16)
        words = rows.view("<u8").reshape(n, 2)
        prev, raw = words[:, 0].copy(), words[:, 1].copy()
        ok &= _mmap_headers(pages, prev, raw, self.bound)
        self.win = (q, prev, raw, ok)

    def _cached(self, q: int):
        """(prev, raw, ok) at page q from the window, or None when it is not in it."""
        if self.win is None:
            return None
        first, prev, raw, ok = self.win
        k = (q - first) // PAGE
        if q < first or k >= len(ok):
            return None
        return int(prev[k]), int(raw[k]), bool(ok[k])

    def _probe(self, q: int):
        """The header at page q: (prev, raw, ok), read on its own when not in the window."""
        got = self._cached(q)
        if got is not None:
            return got
        import numpy as np

        self.budget -= 1
        try:
            prev, raw = self.mem.unpack("QQ", q)
        except ReadError:
            return 0, 0, False
        ok = bool(_mmap_headers(np.uint64(q), np.uint64(prev), np.uint64(raw), self.bound))
        return prev, raw, ok

    def _confirm(self, q: int, prev: int, raw: int) -> MmapChunk | None:
        """The chunk whose header (prev, raw) was read at page q: at q itself, or at q + prev,
        which must hold the same header."""
        if prev:
            try:
                if self.mem.unpack("QQ", q + prev) != (prev, raw):
                    return None
            except ReadError:
                return None
        return MmapChunk(q + prev, raw & ~SIZE_BITS, prev)

    def chunks(self, done=None) -> list[MmapChunk]:
        import numpy as np

        out: list[MmapChunk] = []
        q = self.run.start
        while q < self.run.end and self.budget > 0:
            part = self._part(q)
            if part is None:
                break
            a, b = part
            q = max(q, a)
            prev, raw, ok = self._probe(q)
            c = self._confirm(q, prev, raw) if ok else None
            if c is not None:
                out.append(c)
                q = q + PAGE if self.thorough else c.addr + c.size
                if done is not None and done(c):
                    break
                continue
            # no chunk starts here: the next header among the page starts that follow
            q += PAGE
            while q < b and self.budget > 0:
                if self._cached(q) is None:
                    self._window(q, b)
                first, _prev, _raw, hit = self.win
                k = (q - first) // PAGE
                hits = np.flatnonzero(hit[k:])
                if len(hits):
                    q += int(hits[0]) * PAGE
                    break
                q = first + len(hit) * PAGE
        return out


def _memaligned(mem, found: list[MmapChunk]) -> list[MmapChunk]:
    """Each chunk found at a mapping's start (prev_size 0) replaced by the chunk memalign
    placed inside it, where there is one. glibc's _int_memalign (posix_memalign,
    aligned_alloc, valloc) moves an mmapped chunk at q to the header before the first
    A-aligned address past q + 16 (A, the alignment, a power of two; one A further when that
    is less than MINSIZE past q) and writes there prev_size = the lead and size = size - lead;
    q keeps the header of the chunk as it was mmapped. Each A up to the chunk's size is one
    candidate, taken when its header names its lead exactly."""
    import numpy as np

    cand = []  # (index in found, header address, lead)
    for i, c in enumerate(found):
        if c.prev_size:
            continue
        a = 32
        while a < c.size:
            brk = ((c.addr + 16 + a - 1) & ~(a - 1)) - 16
            if brk - c.addr < MINSIZE:
                brk += a
            if brk + MINSIZE <= c.addr + c.size:
                cand.append((i, brk, brk - c.addr))
            a <<= 1
    if not cand:
        return found
    rows, ok = Gather(mem).rows(np.array([h for _i, h, _l in cand], np.uint64), 16)
    words = rows.view("<u8").reshape(len(cand), 2)
    out = list(found)
    for k in np.flatnonzero(ok).tolist():
        i, h, lead = cand[k]
        c = found[i]
        if (int(words[k, 0]) == lead and int(words[k, 1]) == (c.size - lead) | IS_MMAPPED
                and out[i] is c):
            out[i] = MmapChunk(h, c.size - lead, lead)
    return out


def mmapped_chunks(mem, exclude: list[tuple[int, int]],
                   counted: tuple[int, int] | None = None) -> list[MmapChunk]:
    """Chunks glibc mmapped for large requests, found by their headers in the runs of
    adjacent anonymous mappings outside the heaps (see _RunScan): mprotect may have split a
    chunk's mapping (a read-only page, a PROT_NONE guard: a chunk crosses mapping
    boundaries) and the kernel may have merged it with its neighbours (other chunks, a thread
    arena's heap, any anonymous mmap). counted, when given, is glibc's own count
    (mp_.n_mmaps, mp_.mmapped_mem): once the chunks found add up to exactly that, the search
    stops."""
    out: list[MmapChunk] = []
    seen = [0, 0]  # chunks and bytes found so far

    def done(c: MmapChunk) -> bool:
        seen[0] += 1
        seen[1] += c.mapped
        return counted is not None and counted[0] > 0 and tuple(seen) == tuple(counted)

    for run in anon_runs(mem, exclude):
        out += _RunScan(mem, run).chunks(done)
        if counted is not None and counted[0] > 0 and tuple(seen) == tuple(counted):
            break
    return _memaligned(mem, out)


def explain_mmap_count(mem, exclude: list[tuple[int, int]], counted: tuple[int, int] | None,
                       found: list[MmapChunk]) -> tuple[list[MmapChunk], list]:
    """When fewer mmapped chunks are found than glibc counts, what a smashed size leaves: a
    chunk whose size runs over the next chunk (the chain of headers jumps over it) or past
    its mapping into a heap (its header is not believed). Every page start of the runs is
    looked at again (_RunScan, thorough); the headers found are taken, and each chunk that
    runs over the next header or past its run is reported once and cut there, only when that
    makes the chunks add up to glibc's n_mmaps exactly (the explanation is then certain;
    otherwise the count's own warning stays). Returns (chunks, damage)."""
    from mdbpy.heap.damage import Damage

    if counted is None or len(found) >= counted[0]:
        return found, []
    runs = anon_runs(mem, exclude)
    seen: dict[int, tuple[MmapChunk, int]] = {}  # chunk -> (chunk, end of its run)
    for run in runs:
        for c in _memaligned(mem, _RunScan(mem, run, thorough=True).chunks()):
            seen.setdefault(c.addr, (c, run.end))
    for c in found:
        seen.setdefault(c.addr, (c, next((r.end for r in runs if r.start <= c.addr < r.end),
                                         c.addr + c.size)))
    heaps = {a for a, _b in exclude}
    ordered = sorted(seen.values(), key=lambda x: x[0].addr)
    out, damage = [], []
    for i, (c, run_end) in enumerate(ordered):
        end = c.addr + c.size
        nxt = ordered[i + 1][0] if i + 1 < len(ordered) else None
        if nxt is not None and end > nxt.addr - nxt.prev_size:
            cut = nxt.addr - nxt.prev_size
            why = f"runs over the mmapped chunk 0x{nxt.addr:x}"
        elif end > run_end:
            cut = run_end
            why = (f"runs into the heap at 0x{run_end:x}" if run_end in heaps else
                   f"runs past its mapping at 0x{run_end:x}")
        else:
            out.append(c)
            continue
        damage.append(Damage("mmapped", c.addr, f"chunk 0x{c.addr:x}: size 0x{c.size:x} "
                             f"{why} (a smashed size)", c.addr, end))
        out.append(MmapChunk(c.addr, cut - c.addr, c.prev_size))
    if not damage or len(out) != counted[0]:
        return found, []
    return out, damage


def mp_faults(st) -> list[tuple[str, int, str]]:
    """The fields of mp_ outside the range glibc keeps them in, as (field, its address,
    what): the mmap counters never exceed their high-water marks (max_n_mmaps,
    max_mmapped_mem) nor go below 0, and tcache_bins never exceeds the release's bins."""
    from .layouts import tcache_bins

    mp = st.mp
    if mp is None:
        return []
    try:
        v = {f: int(getattr(mp, f)) for f in ("n_mmaps", "max_n_mmaps", "mmapped_mem",
                                               "max_mmapped_mem", "tcache_bins")}
    except ReadError:
        return []
    out = []
    if not 0 <= v["n_mmaps"] <= v["max_n_mmaps"]:
        out.append(("n_mmaps", f"n_mmaps {v['n_mmaps']} is outside 0..max_n_mmaps "
                               f"{v['max_n_mmaps']}"))
    if v["mmapped_mem"] > v["max_mmapped_mem"]:
        out.append(("mmapped_mem", f"mmapped_mem 0x{v['mmapped_mem']:x} is above "
                                   f"max_mmapped_mem 0x{v['max_mmapped_mem']:x}"))
    if v["tcache_bins"] > tcache_bins(st.version):
        out.append(("tcache_bins", f"tcache_bins {v['tcache_bins']} is above the "
                                   f"{tcache_bins(st.version)} bins of glibc "
                                   f"{st.version[0]}.{st.version[1]}"))
    return [(f, mp.addr + mp.struct.offset(f), why) for f, why in out]


def mmap_counters(st) -> tuple[int, int] | None:
    """glibc's count of its mmapped chunks: (mp_.n_mmaps, mp_.mmapped_mem), or None without
    mp_ or when the counters are out of their range (mp_faults: verify reports that, and
    comparing the chunks with a smashed count would only say it again)."""
    if st.mp is None or any(f in ("n_mmaps", "mmapped_mem") for f, _a, _w in mp_faults(st)):
        return None
    try:
        return int(st.mp.n_mmaps), int(st.mp.mmapped_mem)
    except ReadError:
        return None


def mmap_count_damage(st, counted: tuple[int, int] | None, found: list[MmapChunk]) -> list:
    """One Damage when the mmapped chunks found are not what glibc counts: some were not
    found (a header unreadable or smashed, a mapping the core left out) or mp_ is damaged.
    Nothing is invented to match."""
    from mdbpy.heap.damage import Damage

    if counted is None:
        return []
    n, size = len(found), sum(c.mapped for c in found)
    if (n, size) == tuple(counted):
        return []
    at = st.mp.addr
    return [Damage(f"mp_ 0x{at:x}", at, f"counts {counted[0]} mmapped chunk"
                   f"{'' if counted[0] == 1 else 's'} of 0x{counted[1]:x} bytes (n_mmaps, "
                   f"mmapped_mem); {n} of 0x{size:x} bytes found", at, at)]


def flag_text(flags: int) -> str:
    """PREV_INUSE / IS_MMAPPED / NON_MAIN_ARENA as pwndbg's 'PIN' letters."""
    return "".join(ch if flags & bit else "-" for ch, bit in
                   (("P", PREV_INUSE), ("M", IS_MMAPPED), ("N", NON_MAIN_ARENA)))
