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
window is read in a small block of its own. Mmapped chunks are found separately, at the page
starts of anonymous mappings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import ReadError

from .layouts import IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE, SIZE_BITS

MINSIZE = 32
PAGE = 4096
MAX_MMAP_SCAN_PAGES = 1 << 16  # page starts probed per anonymous mapping
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
        self.raw = self.nxt = None
        self.peeks: dict[int, object] = {}  # block number -> that block's next slots

    def load(self, lo: int) -> None:
        """Make the window start at slot lo."""
        import numpy as np

        if self.progress is not None:
            self.progress(16 * lo, 16 * self.end)
        hi = min(lo + max(WINDOW // 16, 1), self.end)
        self.raw = self.nxt = None  # the old window is freed before the new one is read
        data = self.mem.read(self.first + 16 * lo, 16 * (hi - lo))
        self.raw = np.frombuffer(data, dtype="<u8")[1::2]
        self.nxt = _next_slots(self.raw, lo, self.end)
        self.lo, self.hi = lo, hi

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
    """The chunk slots found so far: numpy parts of the windows left, and a list for the
    current one (its size words are taken from the window before the window moves)."""

    def __init__(self):
        self.idx: list = []
        self.raw: list = []
        self.pending: list[int] = []
        self.flushed = 0

    def __len__(self) -> int:
        return self.flushed + len(self.pending)

    def flush(self, s: _Slots) -> None:
        import numpy as np

        if self.pending:
            part = np.asarray(self.pending, dtype=np.int64)
            self.idx.append(part)
            self.raw.append(s.raw[part - s.lo])
            self.flushed += len(part)
            self.pending = []

    def columns(self):
        """(slot indices, size words) of every chunk found, in address order."""
        import numpy as np

        if not self.idx:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        return np.concatenate(self.idx), np.concatenate(self.raw)


def walk_heap(mem, first: int, end: int, top: int | None, progress=None) -> HeapWalk:
    """Chunks in [first, end); `top`, when given, is the chunk at `end` whose PREV_INUSE
    bit says whether the last chunk is in use. Without a top (an older heap of a thread
    arena), the walk stops at the fenceposts glibc leaves at the heap's end. progress, when
    given, is called as progress(bytes passed, bytes of the heap) at every window."""
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
    k = 0
    # every step moves k forward (a valid size by 2 slots at least, a resync by 1 at least)
    # and never past nslots: the loop ends
    while k < nslots:
        if k >= s.hi:
            found.flush(s)
            s.load(k)
        nv, lo, hi = memoryview(s.nxt), s.lo, s.hi
        add = found.pending.append
        while k < hi:
            k2 = nv[k - lo]
            if k2 < 0:
                break
            add(k)
            k = k2
        else:
            continue  # the walk left the window
        rawk = int(s.raw[k - lo])
        if top is None and rawk & ~SIZE_BITS == 16:
            break  # the fencepost pair that closes an old thread heap
        size = rawk & ~SIZE_BITS
        addr = first + 16 * k
        why = (f"chunk 0x{addr:x}: size 0x{size:x} runs past the "
               f"{'top chunk' if top else 'heap end'} at 0x{end:x}"
               if MINSIZE <= size <= MAX_CHUNK and not size & 15 else
               f"chunk 0x{addr:x}: bad size 0x{rawk:x} (smashed header?)")
        bad_at.append(len(found))
        add(k)
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
    idx, rsize = found.columns()
    addrs = np.uint64(first) + idx.astype(np.uint64) * np.uint64(16)
    follow = np.append(idx[1:], k).astype(np.int64) if len(idx) else idx
    sizes = (follow - idx).astype(np.uint64) * np.uint64(16)
    flags = (rsize & np.uint64(SIZE_BITS)).astype(np.uint8)
    # the header after each chunk: the next chunk's, or the top's (or fencepost's)
    words_after = (np.append(rsize[1:], np.uint64(last_word)) if len(idx)
                   else np.zeros(0, np.uint64))
    npi = (words_after & np.uint64(PREV_INUSE)) != 0
    bad = np.zeros(len(idx), bool)
    if bad_at:
        bad[bad_at] = True
    return HeapWalk(addrs, sizes, flags, npi, problems, bad)


@dataclass
class MmapChunk:
    addr: int
    size: int
    prev_size: int


def mmapped_chunks(mem, exclude: list[tuple[int, int]]) -> list[MmapChunk]:
    """Chunks glibc mmapped for large requests: at a page start of an anonymous writable
    mapping outside every heap, a header whose size has IS_MMAPPED alone among the flag bits,
    whose prev_size (the alignment correction) is below a page, and whose extent ends on a
    page boundary inside the mapping. Adjacent chunks merged into one mapping are chained."""
    out = []
    for m in mem.mappings():
        if not (m.readable and m.writable) or m.shared or (m.is_file and m.path):
            continue
        if m.path in ("[stack]", "[vvar]", "[vdso]", "[vsyscall]"):
            continue
        if any(a < m.end and m.start < b for a, b in exclude):
            continue
        q = m.start
        probes = 0
        while q + 16 <= m.end and probes < MAX_MMAP_SCAN_PAGES:
            probes += 1
            try:
                prev, raw = mem.unpack("QQ", q)
            except ReadError:
                q += PAGE
                continue
            size = raw & ~SIZE_BITS
            if (raw & SIZE_BITS == IS_MMAPPED and prev < PAGE and not prev & 15
                    and size >= PAGE and not (prev + size) % PAGE
                    and q + prev + size <= m.end):
                c = q + prev
                try:
                    cprev, craw = mem.unpack("QQ", c) if prev else (prev, raw)
                except ReadError:
                    cprev, craw = -1, 0
                if cprev == prev and craw == raw:
                    out.append(MmapChunk(c, size, prev))
                    q = c + size
                    continue
            q += PAGE
    return out


def flag_text(flags: int) -> str:
    """PREV_INUSE / IS_MMAPPED / NON_MAIN_ARENA as pwndbg's 'PIN' letters."""
    return "".join(ch if flags & bit else "-" for ch, bit in
                   (("P", PREV_INUSE), ("M", IS_MMAPPED), ("N", NON_MAIN_ARENA)))
