"""The one batched reader: many small scattered records and fields with few large reads, as
numpy arrays, for every allocator.

Allocators keep their state in linked structures (umem's hash chains and slab freelists,
glibc's chunk headers, the simulator's tracks) spread over the heap, and findleaks wants a
record for each of thousands of leaks. One read per record costs ~10 us; instead a Gather
takes all the addresses of one step at once (the walkers advance every chain together:
"frontier" steps), touches each page once, and cuts the records out with one numpy gather.
A core file's records are cut straight out of its mapped image (Target.read_rows). List
walks, whose next address is known only once a node is read, read through the same pages
(bytes_at), so every walk of one operation shares one read cache: the session's Gather.

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

from collections import OrderedDict

PAGE = 4096
BLOCK = 1 << 16  # what a single-address read brings in around its page (list nodes cluster)
WINDOW_PAGES = 1 << 14  # pages one call joins at a time (64 MiB)
MAX_CACHED = 1 << 26  # bytes of pages a Gather keeps between calls (never what one call sees)
GAP_PAGES = 16  # pages between two needed ones that are read rather than skipped


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
        """[a, b) with zeros where nothing is mapped or readable (listed in `failed`)."""
        import bisect

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
        # page number -> bytes (None: unreadable), oldest first
        self._pages: OrderedDict[int, bytes | None] = OrderedDict()

    @property
    def mapped(self) -> Mapped:
        """The mappings, listed when a page is first read (a core's rows rarely need it)."""
        if self._mapped is None:
            self._mapped = Mapped(self.mem)
        return self._mapped

    def _load(self, pages: list[int]) -> dict[int, bytes | None]:
        """Every one of the pages (sorted unique page numbers): kept ones, the rest read in
        runs; then as many of the new ones as the budget allows are kept for later calls."""
        got: dict[int, bytes | None] = {}
        missing = []
        for p in pages:
            if p in self._pages:
                got[p] = self._pages[p]
            else:
                missing.append(p)
        fresh: dict[int, bytes | None] = {}
        k = 0
        while k < len(missing):  # runs of pages, bridging small gaps: reads cost more than bytes
            j = k
            while j + 1 < len(missing) and missing[j + 1] - missing[j] <= GAP_PAGES:
                j += 1
            a, b = missing[k] * PAGE, (missing[j] + 1) * PAGE
            failed: list[tuple[int, int]] = []
            data = self.mapped.read(a, b, failed)
            for p in missing[k:j + 1]:
                lo, hi = p * PAGE, (p + 1) * PAGE
                bad = any(x < hi and lo < y for x, y in failed)
                fresh[p] = None if bad else data[lo - a:hi - a]
            k = j + 1
        got.update(fresh)
        self._keep(fresh)
        return got

    def _keep(self, fresh: dict) -> None:
        """Keep the pages just read, dropping the oldest kept ones to stay in the budget."""
        room = MAX_CACHED // PAGE
        items = list(fresh.items())[-room:] if room > 0 else []
        while self._pages and len(self._pages) + len(items) > room:
            self._pages.popitem(last=False)
        self._pages.update(items)

    def bytes_at(self, addr: int, n: int) -> bytes | None:
        """The n bytes at addr, or None when any of them cannot be read: the one read of a
        list walk's node, whose next address is known only once this one is read. A page not
        kept brings its BLOCK-aligned neighbours along (the nodes of one list come from a few
        caches' slabs, side by side), so that every walk of the operation shares the pages
        and no byte is read twice while the budget holds."""
        if addr < 0 or n <= 0 or addr + n > 1 << 64:
            return None
        first, last = addr // PAGE, (addr + n - 1) // PAGE
        pages = self._pages
        if first == last:
            page = pages.get(first, False)
            if page is False:
                page = self._fill(first)
            if page is None:
                return None
            at = addr - first * PAGE
            return page[at:at + n]
        parts = []
        for p in range(first, last + 1):
            page = pages.get(p, False)
            if page is False:
                page = self._fill(p)
            if page is None:
                return None
            parts.append(page)
        at = addr - first * PAGE
        return b"".join(parts)[at:at + n]

    def _fill(self, p: int) -> bytes | None:
        """Read page p's block (clipped to the mapping run holding p), keep its pages and
        return page p (None: unreadable)."""
        lo, hi = self.mapped.span(p * PAGE)
        if lo is None:
            self._keep({p: None})
            return None
        a = max(lo, (p * PAGE) & ~(BLOCK - 1))
        b = min(hi, ((p * PAGE) & ~(BLOCK - 1)) + BLOCK)
        failed: list[tuple[int, int]] = []
        data = self.mapped.read(a, b, failed)
        fresh: dict[int, bytes | None] = {}
        for q in range(a // PAGE, b // PAGE):
            qa = q * PAGE
            bad = any(x < qa + PAGE and qa < y for x, y in failed)
            fresh[q] = None if bad else data[qa - a:qa - a + PAGE]
        self._keep(fresh)
        return fresh.get(p)

    def rows(self, addrs, size: int):
        """(rows, ok): an (n, size) uint8 array of the `size` bytes at each address, in the
        order given, and which of them could be read (the others are zero and must not be
        used). A core's rows come straight from its mapped image where they can; the rest
        (and a live process's) from the pages, in PAGE-byte pieces of each row."""
        import numpy as np

        addrs = np.asarray(addrs, dtype=np.uint64)
        n = len(addrs)
        if not n or size <= 0:
            return np.zeros((n, max(size, 0)), np.uint8), np.zeros(n, bool)
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
        zero = bytes(PAGE)
        for idx in np.split(order, cuts):
            f, la = first[idx], np.maximum(last[idx], first[idx])
            pages = np.unique(np.concatenate((f, la)))
            plist = pages.tolist()
            got = self._load(plist)
            readable = np.array([got[p] is not None for p in plist], bool)
            buf = np.frombuffer(b"".join([got[p] or zero for p in plist] + [bytes(size)]),
                                np.uint8)
            at = np.searchsorted(pages, f)
            ok[idx] &= readable[at] & readable[np.searchsorted(pages, la)]
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

        fs = [bound.field(n) for n in names]
        lo = min(f.offset for f in fs)
        hi = max(f.offset + f.size for f in fs)
        raw, ok = self.read(np.asarray(addrs, np.uint64) + np.uint64(lo), hi - lo, "u1")
        raw = raw.reshape(len(ok), hi - lo)
        out = {}
        for name, f in zip(names, fs):
            out[name] = np.ascontiguousarray(raw[:, f.offset - lo:f.offset - lo + f.size]) \
                .view(_dtype(f)).reshape(-1)
        return out, ok

    def field(self, addrs, bound_field):
        """(values, ok) of a scalar field of a bound struct at each struct address."""
        import numpy as np

        f = bound_field
        return self.read(np.asarray(addrs, np.uint64) + np.uint64(f.offset), f.size, _dtype(f))


def _dtype(f) -> str:
    """The numpy dtype of a bound scalar field (pointers unsigned)."""
    return f"<{'i' if f.signed and f.kind != 'ptr' else 'u'}{f.size}"
