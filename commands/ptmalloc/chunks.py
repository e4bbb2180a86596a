"""The chunk walk: every chunk of every heap, as numpy columns, fast and robust to damage.

A heap is read in one block and viewed as 16-byte slots. For every slot the index of the slot
its size field would lead to is computed at once (numpy), with -1 where that size is not a
chunk size (below MINSIZE, misaligned, past the end). The walk itself, sequential by nature,
is then a tight loop over a memoryview of that array: one index and one append per chunk. A bad
size is reported and the walk resynchronises on the next slot whose size leads to another
valid header (or exactly to the heap's end), so one smashed header never hides the rest of
the heap. Mmapped chunks are found separately, at the page starts of anonymous mappings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import ReadError

from .layouts import IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE, SIZE_BITS

MINSIZE = 32
PAGE = 4096
MAX_MMAP_SCAN_PAGES = 1 << 16  # page starts probed per anonymous mapping
MAX_CHUNK = 1 << 40  # no heap chunk is larger: a size beyond is garbage


@dataclass
class HeapWalk:
    """The chunks of one heap: addresses, sizes and flag bits in address order."""

    addr: object  # np.ndarray uint64: chunk addresses
    size: object  # np.ndarray uint64: chunk sizes (for a damaged chunk, up to the resync)
    flags: object  # np.ndarray uint8: the size field's low 3 bits
    next_prev_inuse: object  # np.ndarray bool: the following header's PREV_INUSE bit
    problems: list = field(default_factory=list)  # [(chunk, resume address, message)]
    bad: object = None  # np.ndarray bool: chunks whose size field was not usable


def _next_slots(words, nslots: int, end_slot: int):
    """Per slot, the slot its size field leads to, or -1 for an impossible size."""
    import numpy as np

    raw = words[1:2 * nslots:2]
    size = raw & np.uint64(~SIZE_BITS & 0xFFFFFFFFFFFFFFFF)
    steps = (size >> np.uint64(4)).astype(np.int64)
    nxt = np.arange(nslots, dtype=np.int64) + steps
    bad = (size < MINSIZE) | ((size & np.uint64(15)) != 0) | (size > np.uint64(MAX_CHUNK))
    bad |= nxt > end_slot
    nxt[bad] = -1
    return nxt, raw


def _resync(nxt, start: int, end_slot: int) -> int:
    """The first slot after start whose size leads to the end or to another valid header."""
    import numpy as np

    cand = nxt[start + 1:end_slot]
    ok = cand >= 0
    follow = np.where(ok, cand, 0)
    ok &= (follow == end_slot) | (nxt[np.minimum(follow, len(nxt) - 1)] >= 0)
    hits = np.nonzero(ok)[0]
    return start + 1 + int(hits[0]) if len(hits) else end_slot


def walk_heap(mem, first: int, end: int, top: int | None) -> HeapWalk:
    """Chunks in [first, end); `top`, when given, is the chunk at `end` whose PREV_INUSE
    bit says whether the last chunk is in use. Without a top (an older heap of a thread
    arena), the walk stops at the fenceposts glibc leaves at the heap's end."""
    import numpy as np

    span = max(end - first, 0) & ~15
    data = mem.read(first, span + (16 if top is not None else 0))
    nslots = span // 16
    words = np.frombuffer(data, dtype="<u8", count=len(data) // 8)
    nxt, raw = _next_slots(words, nslots, nslots)
    nv = memoryview(nxt)
    order: list[int] = []
    add = order.append
    problems: list[tuple[int, int, str]] = []
    bad_slots: list[int] = []
    k = 0
    guard = nslots + 1
    while k < nslots and guard:
        guard -= 1
        k2 = nv[k]
        if k2 < 0:
            rawk = int(raw[k])
            if top is None and rawk & ~SIZE_BITS == 16:
                break  # the fencepost pair that closes an old thread heap
            size = rawk & ~SIZE_BITS
            addr = first + 16 * k
            why = (f"chunk 0x{addr:x}: size 0x{size:x} runs past the "
                   f"{'top chunk' if top else 'heap end'} at 0x{end:x}"
                   if MINSIZE <= size <= MAX_CHUNK and not size & 15 else
                   f"chunk 0x{addr:x}: bad size 0x{rawk:x} (smashed header?)")
            k2 = _resync(nxt, k, nslots)
            if k2 < nslots:
                why += f"; walk resumes at 0x{first + 16 * k2:x}"
            problems.append((addr, first + 16 * k2, why))
            bad_slots.append(len(order))
            add(k)
            k = k2
            continue
        add(k)
        k = k2
    idx = np.asarray(order, dtype=np.int64)
    addrs = np.uint64(first) + idx.astype(np.uint64) * np.uint64(16)
    rsize = raw[idx] if len(idx) else np.zeros(0, np.uint64)
    follow = np.append(idx[1:], k).astype(np.int64) if len(idx) else idx
    sizes = (follow - idx).astype(np.uint64) * np.uint64(16)
    flags = (rsize & np.uint64(SIZE_BITS)).astype(np.uint8)
    # the header after each chunk: the next chunk's, or the top's (or fencepost's)
    words_after = np.append(raw[idx[1:]] if len(idx) > 1 else np.zeros(0, np.uint64),
                            _word_at(words, raw, k, nslots, top, span))
    npi = (words_after & np.uint64(PREV_INUSE)) != 0
    bad = np.zeros(len(idx), bool)
    if bad_slots:
        bad[bad_slots] = True
    return HeapWalk(addrs, sizes, flags, npi, problems, bad)


def _word_at(words, raw, k: int, nslots: int, top, span: int):
    """The size word of the header at slot k (the top chunk's when k is the end)."""
    import numpy as np

    if k < nslots:
        return np.asarray([raw[k]], dtype=np.uint64)
    i = span // 8 + 1
    return np.asarray([words[i] if i < len(words) else 1], dtype=np.uint64)


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
