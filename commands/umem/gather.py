"""Reading many small scattered fields with few large reads, as numpy arrays.

libumem keeps its state in linked structures (hash chains of bufctls, slab freelists) spread
over the heap. Following 200,000 of them one read at a time is slow; instead the walkers advance
every chain at once ("frontier" steps): one Gather call reads a field of all current elements,
touching each page once. Pages read are kept (bounded), so the following steps of the same walk
cost only numpy indexing, and each call joins only the pages it needs.
"""

from __future__ import annotations

from mdbpy.errors import ReadError

PAGE = 4096
MAX_BYTES = 1 << 30  # a walk that wants more than this from one Gather is a corrupt one
MAX_CACHED = 1 << 28  # bytes of pages a Gather keeps between calls
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
    """Pages read once and kept (up to MAX_CACHED bytes; then the cache starts over), and
    fields cut out of them for many addresses at once."""

    def __init__(self, mem):
        self.mem = mem
        self.mapped = Mapped(mem)
        self._pages: dict[int, bytes] = {}  # page number -> its bytes (zeros if unreadable)
        self.unreadable: list[tuple[int, int]] = []

    def _load(self, pages: list[int]) -> None:
        """Read the pages (sorted unique page numbers) not read before, in runs."""
        missing = [p for p in pages if p not in self._pages]
        if not missing:
            return
        if (len(self._pages) + len(missing)) * PAGE > MAX_CACHED:
            self._pages.clear()
        if len(missing) * PAGE > MAX_BYTES:
            raise ReadError(missing[0] * PAGE, len(missing) * PAGE,
                            "too much memory for one walk (corrupt structures?)")
        k = 0
        while k < len(missing):  # runs of pages, bridging small gaps: reads cost more than bytes
            j = k
            while j + 1 < len(missing) and missing[j + 1] - missing[j] <= GAP_PAGES:
                j += 1
            a, b = missing[k] * PAGE, (missing[j] + 1) * PAGE
            data = self.mapped.read(a, b, self.unreadable)
            for p in missing[k:j + 1]:
                self._pages[p] = data[p * PAGE - a:(p + 1) * PAGE - a]
            k = j + 1

    def read(self, addrs, size: int, dtype: str):
        """The `size`-byte little-endian values at each address, as dtype (e.g. '<u8');
        unreadable bytes read as zeros."""
        import numpy as np

        addrs = np.asarray(addrs, dtype=np.uint64)
        if not len(addrs):
            return np.zeros(0, dtype)
        first = addrs // np.uint64(PAGE)
        last = (addrs + np.uint64(size - 1)) // np.uint64(PAGE)
        pages = np.unique(np.concatenate((first, last)))
        self._load(pages.tolist())
        # the pages this call needs, side by side: a value that runs into the next page finds
        # it next (padded for an address that wraps around the top of the address space)
        buf = np.frombuffer(b"".join([self._pages.get(p, bytes(PAGE)) for p in pages.tolist()]
                                     + [bytes(size)]), np.uint8)
        pos = np.searchsorted(pages, first).astype(np.int64) * PAGE + (
            addrs % np.uint64(PAGE)).astype(np.int64)
        raw = buf[pos[:, None] + np.arange(size)]
        return raw.reshape(-1).view(dtype).copy()

    def u64(self, addrs):
        return self.read(addrs, 8, "<u8")

    def field(self, addrs, bound_field):
        """A scalar field of a bound struct at each struct address."""
        import numpy as np

        f = bound_field
        dt = f"<{'i' if f.signed and f.kind != 'ptr' else 'u'}{f.size}"
        return self.read(np.asarray(addrs, np.uint64) + np.uint64(f.offset), f.size, dt)
