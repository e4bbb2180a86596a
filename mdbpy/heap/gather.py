"""The one batched reader: many small scattered records and fields with few large reads, as
numpy arrays, for every allocator.

Allocators keep their state in linked structures (umem's hash chains and slab freelists,
glibc's chunk headers, the simulator's tracks) spread over the heap, and findleaks wants a
record for each of thousands of leaks. One read per record costs ~10 us; instead a Gather
takes all the addresses of one step at once (the walkers advance every chain together:
"frontier" steps), touches each page once, and cuts the records out with one numpy gather.
A core file's records are cut straight out of its mapped image (Target.read_rows). List
walks, whose next address is known only once a node is read, read through the same pages, so
every walk of one operation shares one read cache: the session's Gather. The pages are kept
where compiled code can read them too (kernel.c's pool), so that a walk of tens of thousands
of slabs runs in C (walk), coming back to Python only to read a block it does not have.

Three rules keep it exact and bounded whatever the heap's size:
- a call always has every page it needs: the pages kept between calls (up to MAX_CACHED bytes,
  oldest dropped first) only save re-reading; a call that needs more than the budget still
  gets them all (the budget bounds what stays, never what a call sees);
- a call's pages are joined in windows of at most WINDOW_PAGES, so one call over a whole heap
  never holds more than a window's bytes beside its result;
- a page that cannot be read is no page of zeros: every read returns, beside its values, which
  of them were read (`ok`), and the callers treat the others as unreadable (damage reported,
  the buffer not checked), never as values.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

from mdbpy.heap.arrays import distinct

PAGE = 4096
# what a single-address read brings in around its page (list nodes cluster): measured on
# libumem's slab walks over a million buffers, 16 KiB read 35,000 blocks where 64 KiB
# read 45,000 (the neighbours rarely served; the pool dropped them sooner) and cost
# 0.7 s against 1.7 s; 4 KiB reads twice as many
BLOCK = 1 << 14
# a miss within BLOCK past either end of the block read last (a list laid out in address
# order, either way: a cache's on-page slabs, 68,000 of them for a million audit records,
# descending a page at a time in runs) reads the stretch beyond, twice as long as that block,
# up to RUN_MAX: a million buffers' walks made 35,000 reads, now 18,000
RUN_MAX = 1 << 20
# what compiled code reads around a page it misses: measured on the same walks (1 M buffers,
# CPU seconds), 4 KiB against 16 KiB cost 0.27-0.29 against 0.36-0.52 from a live process and
# about the same from a core (a read costs ~2 us there, not ~25: a list's nodes a page or more
# apart are best read alone)
SRC_BLOCK = PAGE
WINDOW_PAGES = 1 << 14  # pages one call joins at a time (64 MiB)
MAX_CACHED = 1 << 26  # bytes of pages a Gather keeps between calls (never what one call sees)
GAP_PAGES = 16  # pages between two needed ones that are read rather than skipped
DENSE_ROWS = 4  # rows a page, on average, from which rows() copies them from the pages
DENSE_MIN = 1 << 12  # ... when there are this many: fewer are not worth finding the source
MIN_BLOCKS = 8  # blocks the pages kept hold at least: every page of one list node's reads
WALK_DONE, WALK_BREAK, WALK_NEED, WALK_FULL = range(4)  # kernel.c's walk_list results


class Mapped:
    """The target's mappings, for reads that skip the holes between them: reading across a
    hole fails and falls back to page-sized reads, a system call each on a live process (and
    a libumem process has a mapping per heap span: tens of thousands)."""

    def __init__(self, mem):
        self.mem = mem
        self.starts: list[int] = []
        self.ends: list[int] = []
        for m in mem.mappings():  # readable ones, contiguous ones merged: one read for both
            if not m.readable:
                continue
            if self.ends and self.ends[-1] == m.start:
                self.ends[-1] = m.end
            else:
                self.starts.append(m.start)
                self.ends.append(m.end)

    def span(self, addr: int) -> tuple[int | None, int | None]:
        """The page-aligned run of readable mappings holding addr, or (None, None)."""
        import bisect

        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0 or addr >= self.ends[i]:
            return None, None
        return self.starts[i], self.ends[i]

    def read(self, a: int, b: int, failed: list) -> bytes:
        """[a, b) with zeros where nothing is mapped or readable (listed in `failed`); one
        read, not a copy, when a single run of mappings holds it all (a list walk's block)."""
        import bisect

        from mdbpy.errors import ReadError

        i = bisect.bisect_right(self.starts, a) - 1
        if i >= 0 and b <= self.ends[i]:
            try:
                return self.mem.read(a, b - a)
            except ReadError:
                pass  # a page of it cannot be read: piece by piece
        data = bytearray(b - a)
        at = a
        for i in range(max(bisect.bisect_right(self.starts, a) - 1, 0), len(self.starts)):
            if self.starts[i] >= b:
                break
            lo, hi = max(a, self.starts[i]), min(b, self.ends[i])
            if lo >= hi:
                continue
            if at < lo:
                failed.append((at, lo))
            for addr, piece in self.mem.blocks(lo, hi, failed=failed):
                data[addr - a:addr - a + len(piece)] = piece
            at = hi
        if at < b:
            failed.append((at, b))
        return bytes(data)


class _Pool:
    """The pages a Gather keeps: kernel.c's pool_t (slots of a store reused oldest first, a
    table from page to slot), shared with the compiled list walks, which read the pages
    where Python put them. A slot of an unreadable page is marked bad and holds no bytes."""

    def __init__(self, nslots: int):
        import ctypes

        import numpy as np

        from mdbpy.heap import kernel

        self.nslots = nslots
        size = 1 << (2 * nslots - 1).bit_length()
        self.keys, self.vals = np.full(size, -1, np.int64), np.zeros(size, np.int32)
        self.owner, self.bad = np.full(nslots, -1, np.int64), np.zeros(nslots, np.uint8)
        self.store = np.empty((nslots, PAGE), np.uint8)  # untouched slots cost no memory
        p = kernel.ptr
        self.c = kernel.PoolStruct(p(self.keys), p(self.vals), size - 1, p(self.owner),
                                   p(self.bad), p(self.store), nslots, 0)
        self.ref = ctypes.byref(self.c)
        self.lib = kernel.lib()
        self._one = np.zeros(1, np.int64)
        self._one_p = p(self._one)

    def lookup(self, pages):
        """The slot of each page (an int64 array), -1 for one not kept."""
        import numpy as np

        from mdbpy.heap.kernel import ptr

        slots = np.empty(len(pages), np.int64)
        self.lib.pool_lookup(self.ref, ptr(pages), len(pages), ptr(slots))
        return slots

    def slot(self, page: int) -> int:
        self._one[0] = page
        self.lib.pool_lookup(self.ref, self._one_p, 1, self._one_p)
        return int(self._one[0])


class _Source:
    """Where kernel.c's src_t reads the pages the compiled walks and row copies miss, so that
    they need not come back to Python for each (a miss handed to Python costs ~25 us beside
    its read, and a million buffers' slabs miss tens of thousands): a file and sorted ranges
    of addresses, each at an offset in that file. A live process: its /proc/PID/mem (the
    offset is the address) over the readable mapping runs. A core: the file the target has
    open, over the bytes its readable segments' images hold (CoreTarget.image_ranges). The
    file is opened for the length of one call (`opened`), so a session that is done with
    holds none. What a source cannot read whole is
    left to Gather's Python path, which reads piece by piece and marks unreadable pages: the
    pool holds the same either way."""

    def __init__(self, open_fd, ranges: list[tuple[int, int, int]], run_max: int):
        import ctypes

        import numpy as np

        from mdbpy.heap import kernel

        self.open_fd = open_fd  # () -> a new descriptor of the file, or OSError
        self.start, self.end, self.off = (np.array(c, np.uint64).reshape(-1)
                                          for c in zip(*ranges or [(0, 0, 0)]))
        self.buf = np.empty(run_max, np.uint8)
        p = kernel.ptr
        self.c = kernel.SrcStruct(-1, p(self.start), p(self.end), p(self.off), len(ranges),
                                  0, 0, SRC_BLOCK, run_max, p(self.buf))
        self.ref = ctypes.byref(self.c)

    @contextmanager
    def opened(self):
        """This source with its file open, or None when it cannot be opened (the process
        has gone, the target was closed): the calls then read through Python."""
        try:
            fd = self.open_fd()
        except OSError:
            yield None
            return
        self.c.fd = fd
        try:
            yield self
        finally:
            self.c.fd = -1
            os.close(fd)

    @classmethod
    def of(cls, mem, mapped: Mapped, run_max: int) -> _Source | None:
        """The source of a live process's or a core's pages, or None (other targets' pages
        are read through Python). A core's file is the one the target has open (a file put
        at its path since is not read)."""
        from mdbpy.target.core import CoreTarget
        from mdbpy.target.live import LiveTarget

        target = mem.target
        if isinstance(target, LiveTarget):
            return cls(target.image_fd, [
                (a, b, a) for a, b in zip(mapped.starts, mapped.ends) if b <= 1 << 63], run_max)
        if isinstance(target, CoreTarget):
            # whole pages only: the pool keeps pages, and a segment of a damaged core that
            # starts inside a page would shift every byte read from it
            return cls(target.image_fd, [
                (a, a + (b - a) // PAGE * PAGE, off) for a, b, off in target.image_ranges()
                if a % PAGE == 0 and b - a >= PAGE], run_max)
        return None


def session_gather(session) -> Gather:
    """The session's Gather (pages read stay cached until the target changes)."""
    g = session.cache.get("umem_gather")
    if g is None:
        g = session.cache["umem_gather"] = Gather(session.mem)
    return g


class Gather:
    """Pages read and kept (up to MAX_CACHED bytes, read at each call), and fields cut out of
    them for many addresses at once."""

    def __init__(self, mem):
        self.mem = mem
        self._mapped: Mapped | None = None
        self._pool: _Pool | None = None
        self._last = (0, 0)  # [start, end) of the block _fill read last
        self._source: _Source | None | bool = False  # False: not looked for yet

    @property
    def mapped(self) -> Mapped:
        """The mappings, listed when a page is first read (a core's rows rarely need it)."""
        if self._mapped is None:
            self._mapped = Mapped(self.mem)
        return self._mapped

    @property
    def run_max(self) -> int:
        """The longest read _fill makes: RUN_MAX, or less in a pool too small to keep
        MIN_BLOCKS of them."""
        return min(RUN_MAX, self.pool.nslots * PAGE // MIN_BLOCKS)

    def opened_source(self):
        """A context giving where compiled code reads the pages it misses (a live process's
        or a core's file, open), or None: then they come back to Python."""
        if self._source is False:
            self._source = _Source.of(self.mem, self.mapped, self.run_max)
        return nullcontext(None) if self._source is None else self._source.opened()

    @property
    def pool(self) -> _Pool:
        """The pages kept, made when a page is first read."""
        if self._pool is None:
            self._pool = _Pool(max(MAX_CACHED // PAGE, MIN_BLOCKS * BLOCK // PAGE))
        return self._pool

    def _load(self, pages):
        """(buf, readable): every one of the pages (sorted unique page numbers, an int64 array)
        side by side in buf, one row each and a row of zeros after them (a value cut past the
        last page finds it), kept ones copied, the rest read in runs; then as many of the new
        ones as the budget allows are kept for later calls."""
        import numpy as np

        pool = self.pool
        slots = pool.lookup(pages)
        have = slots >= 0
        buf = np.zeros((len(pages) + 1, PAGE), np.uint8)
        buf[:-1][have] = pool.store[slots[have]]
        readable = np.ones(len(pages), bool)
        readable[have] = pool.bad[slots[have]] == 0
        at = np.flatnonzero(~have)
        missing = pages[at]
        # runs of pages, bridging small gaps: reads cost more than bytes
        cuts = np.flatnonzero(np.diff(missing) > GAP_PAGES) + 1
        for run, idx in zip(np.split(missing, cuts), np.split(at, cuts)) if len(at) else ():
            data, bad = self._read_pages(int(run[0]), int(run[-1]) + 1)
            buf[idx] = data[run - run[0]]
            readable[idx] = ~bad[run - run[0]]
        buf[:-1][~readable] = 0
        return buf, readable

    def _read_pages(self, first: int, end: int):
        """(data, bad): pages [first, end) read as rows (zeros where unreadable) and which
        could not be read; kept (every page read is, the oldest kept ones dropped)."""
        import numpy as np

        raw, bad = self._keep(first, end)
        return (np.frombuffer(raw, np.uint8).reshape(-1, PAGE),
                bad if bad is not None else np.zeros(end - first, bool))

    def _keep(self, first: int, end: int):
        """(bytes, which pages could not be read or None when all could) of pages [first,
        end), read and kept: the list walks' one step per block they miss (tens of thousands
        in a big heap), so nothing is built that a fully readable block does not need."""
        failed: list[tuple[int, int]] = []
        raw = self.mapped.read(first * PAGE, end * PAGE, failed)
        bad = None
        if failed:
            import numpy as np

            from mdbpy.heap.kernel import ptr

            bad = np.zeros(end - first, bool)
            for x, y in failed:
                bad[max(x // PAGE - first, 0):-(-y // PAGE) - first] = True
        pool = self.pool
        pool.lib.pool_add(pool.ref, first, end - first, raw,
                          ptr(bad.view(np.uint8)) if bad is not None else 0)
        return raw, bad

    def _slot(self, p: int) -> int | None:
        """The slot of page p, its block read when it is not kept (None: unreadable)."""
        pool = self.pool
        s = pool.slot(p)
        if s < 0:
            self._fill(p)
            s = pool.slot(p)
        return None if pool.bad[s] else s

    def bytes_at(self, addr: int, n: int) -> bytes | None:
        """The n bytes at addr, or None when any of them cannot be read: the one read of a
        list walk's node, whose next address is known only once this one is read. A page not
        kept brings its BLOCK-aligned neighbours along (the nodes of one list come from a few
        caches' slabs, side by side), so that every walk of the operation shares the pages
        and no byte is read twice while the budget holds."""
        if addr < 0 or n <= 0 or addr + n > 1 << 64:
            return None
        parts = []
        for p in range(addr // PAGE, (addr + n - 1) // PAGE + 1):
            s = self._slot(p)
            if s is None:
                return None
            parts.append(self.pool.store[s].tobytes())  # copied: a later fill may reuse s
        at = addr % PAGE
        return b"".join(parts)[at:at + n]

    def _fill(self, p: int) -> None:
        """Read and keep page p's block (clipped to the mapping run holding p), as kernel.c's
        fill_span chooses it with BLOCK: around p, or the stretch beyond the block read last
        when p lies just past either end of it."""
        import numpy as np

        from mdbpy.heap import kernel

        lo, hi = self.mapped.span(p * PAGE)
        if lo is None:
            self.pool.lib.pool_add(self.pool.ref, p, 1, 0, b"\1")
            return
        span = np.zeros(2, np.uint64)
        self.pool.lib.fill_span(*self._last, p * PAGE, BLOCK, self.run_max, kernel.ptr(span))
        a, b = max(lo, int(span[0])), min(hi, int(span[1]))
        self._last = (a, b)
        self._keep(a // PAGE, b // PAGE)

    def walk(self, start: int, limit: int, *, lo: int, n: int, nxt: int, back: int = -1,
             own: int = -1, owner: int = 0, anchor: int = 0, ring: bool = False,
             forward: bool = True, prev: int | None = None, seen=(), rlo: int = 0,
             rn: int = 0):
        """One list walk compiled (kernel.c's walk_list, the checks of mdbpy/heap/walk.py's
        ring direction or chain in their order): (addresses, rows, rok, stop). A node is read
        as [addr + lo, addr + lo + n), links at offsets nxt, back and own (-1: not checked);
        rows holds each node's bytes [addr + rlo, addr + rlo + rn) where rok says they could
        be read; stop is None or (cause, prev, cur, owner found) for walk.py to word. The walk
        reads the pages it needs through this Gather (a block at a time, kept for every other
        walk), so the pool must hold every page of one node: MIN_BLOCKS blocks."""
        import ctypes

        import numpy as np

        from mdbpy.heap import kernel
        from mdbpy.heap.walk import CAUSES

        w = kernel.WalkStruct(lo=lo, n=n, nxt=nxt, back=back, own=own, rlo=rlo, rn=rn,
                              owner=owner, anchor=anchor, ring=ring, forward=forward,
                              limit=limit, cur=start, prev=prev or 0,
                              has_prev=prev is not None)
        seen = np.fromiter(seen, np.uint64)
        out = np.zeros(0, np.uint64)
        rows, rok = np.zeros((0, rn), np.uint8), np.zeros(0, np.uint8)
        lib, pool = kernel.lib(), self.pool
        with self.opened_source() as src:
            while True:
                if w.count == w.cap:  # room for twice as many nodes, and a set to match
                    w.cap = min(max(2 * w.cap, 256), limit) + 1
                    out = np.concatenate((out, np.zeros(w.cap - len(out), np.uint64)))
                    rows = np.concatenate((rows, np.zeros((w.cap - len(rows), rn), np.uint8)))
                    rok = np.concatenate((rok, np.zeros(w.cap - len(rok), np.uint8)))
                    table = np.zeros(1 << (2 * (w.cap + len(seen))).bit_length(), np.uint64)
                    for part in (seen, out[:w.count]):
                        lib.seen_add(kernel.ptr(table), len(table) - 1, kernel.ptr(part),
                                     len(part))
                    w.out, w.rows, w.rok = kernel.ptr(out), kernel.ptr(rows), kernel.ptr(rok)
                    w.seen, w.smask = kernel.ptr(table), len(table) - 1
                r = (lib.walk_list(pool.ref, ctypes.byref(w)) if src is None else
                     lib.walk_list_src(pool.ref, ctypes.byref(w), src.ref))
                if r == WALK_NEED:
                    self._fill(w.need)
                elif r != WALK_FULL:
                    break
        stop = None if r == WALK_DONE else (CAUSES[w.cause], w.prev if w.has_prev else None,
                                            w.cur, w.found)
        k = w.count
        return out[:k], rows[:k], rok[:k].astype(bool), stop

    def rows(self, addrs, size: int):
        """(rows, ok): an (n, size) uint8 array of the `size` bytes at each address, in the
        order given, and which of them could be read (the others are zero and must not be
        used). Rows many to a page, in address order (a cache's bufctls), are copied from
        the pages by compiled code, which reads those it misses from the process's or the
        core's file; others come from Target.read_rows (a core's mapped image, a process's
        scattered reads); the rest from the pages, in PAGE-byte pieces of each row."""
        import numpy as np

        addrs = np.asarray(addrs, dtype=np.uint64)
        n = len(addrs)
        if not n or size <= 0:
            return np.zeros((n, max(size, 0)), np.uint8), np.zeros(n, bool)
        fast = None
        if size <= PAGE and _dense(addrs):
            with self.opened_source() as src:
                if src is not None:
                    fast = self._pooled(src, addrs, size)
        if fast is None:
            fast = self.mem.read_rows(addrs, size)
        if fast is None:
            rows, ok = np.zeros((n, size), np.uint8), np.zeros(n, bool)
        else:
            rows, ok = fast
            if ok.all():
                return rows, ok
        rest = np.flatnonzero(~ok)
        good = np.ones(len(rest), bool)
        for k in range(0, size, PAGE):
            w = min(PAGE, size - k)
            part, got = self._piece(addrs[rest] + np.uint64(k), w)
            rows[rest, k:k + w] = part
            good &= got
        rows[rest[~good]] = 0
        ok[rest] = good
        return rows, ok

    def _pooled(self, src: _Source, addrs, size: int):
        """(rows, ok) of rows() copied from the pool by compiled code, which reads each page
        it misses from src together with the pages the rows after it need (kernel.c's
        pool_rows); ok False where a page is unreadable or src could not read it (the
        caller's page path then does)."""
        import numpy as np

        from mdbpy.heap.kernel import ptr

        pool = self.pool
        rows, ok = np.zeros((len(addrs), size), np.uint8), np.zeros(len(addrs), np.uint8)
        addrs = np.ascontiguousarray(addrs)
        pool.lib.pool_rows(pool.ref, src.ref, ptr(addrs), len(addrs), size, ptr(rows), ptr(ok))
        return rows, ok.view(bool)

    def _piece(self, addrs, size: int):
        """rows() for sizes up to a page: the addresses taken in windows of pages (sorted),
        each window's pages joined side by side so that a value running into the next page
        finds it next, and every row cut out with one numpy gather."""
        import numpy as np

        first = addrs // np.uint64(PAGE)
        last = (addrs + np.uint64(size - 1)) // np.uint64(PAGE)
        out = np.zeros((len(addrs), size), np.uint8)
        ok = last >= first  # an address whose field wraps past 2**64 is no field
        order = np.argsort(first, kind="stable")
        cuts = np.flatnonzero(np.diff(first[order] // np.uint64(WINDOW_PAGES))) + 1
        for idx in np.split(order, cuts):
            f, la = first[idx], np.maximum(last[idx], first[idx])
            pages = distinct(np.concatenate((f, la))).astype(np.int64)
            buf, readable = self._load(pages)
            buf = buf.reshape(-1)
            at = np.searchsorted(pages, f.astype(np.int64))
            ok[idx] &= readable[at] & readable[np.searchsorted(pages, la.astype(np.int64))]
            pos = at.astype(np.int64) * PAGE + (addrs[idx] % np.uint64(PAGE)).astype(np.int64)
            out[idx] = buf[pos[:, None] + np.arange(size)]
        out[~ok] = 0
        return out, ok

    def read(self, addrs, size: int, dtype: str):
        """(values, ok): the `size`-byte little-endian values at each address as dtype (e.g.
        '<u8'), and which of them could be read (the others are 0 and must not be used). A
        size that is a multiple of dtype's gives each address a row of that many values (one
        call for several fields of a struct)."""
        import numpy as np

        rows, ok = self.rows(addrs, size)
        values = np.ascontiguousarray(rows).reshape(-1).view(dtype)
        per = size // values.itemsize if size > 0 else 1
        if per > 1:
            values = values.reshape(-1, per)
        return values, ok

    def u64(self, addrs):
        return self.read(addrs, 8, "<u8")

    def fields(self, addrs, bound, names):
        """({name: values}, ok) of several scalar fields of a bound struct at each struct
        address, cut from one read of the span that holds them all (one join of the pages
        per call, not one per field); ok: every one of them was read."""
        import numpy as np

        fs = {n: bound.field(n) for n in names}
        lo = min(f.offset for f in fs.values())
        hi = max(f.offset + f.size for f in fs.values())
        raw, ok = self.read(np.asarray(addrs, np.uint64) + np.uint64(lo), hi - lo, "u1")
        return cut_fields(raw.reshape(len(ok), hi - lo), fs, lo), ok

    def field(self, addrs, bound_field):
        """(values, ok) of a scalar field of a bound struct at each struct address."""
        import numpy as np

        f = bound_field
        return self.read(np.asarray(addrs, np.uint64) + np.uint64(f.offset), f.size, _dtype(f))


def _dense(addrs) -> bool:
    """Whether rows() should copy these rows from the pages (the pool, filled by compiled
    code) rather than read them one by one (Target.read_rows: from a live process, one iovec
    a row, 0.6 s for a million bufctls against 0.15 s): addresses in ascending order,
    DENSE_ROWS or more rows to a page, as a cache's bufctls are (a million of them in 68,000
    pages)."""
    import numpy as np

    if len(addrs) < DENSE_MIN:
        return False
    pages = addrs // np.uint64(PAGE)
    step = pages[1:] != pages[:-1]
    return bool(np.all(pages[1:] >= pages[:-1])) and \
        len(addrs) >= DENSE_ROWS * (1 + int(np.count_nonzero(step)))


def cut_fields(raw, fs: dict, lo: int) -> dict:
    """{name: values} of the bound scalar fields fs ({name: field}) cut from rows of a
    struct's bytes that start at offset lo."""
    import numpy as np

    return {n: np.ascontiguousarray(raw[:, f.offset - lo:f.offset - lo + f.size])
            .view(_dtype(f)).reshape(-1) for n, f in fs.items()}


def _dtype(f) -> str:
    """The numpy dtype of a bound scalar field (pointers unsigned)."""
    return f"<{'i' if f.signed and f.kind != 'ptr' else 'u'}{f.size}"
