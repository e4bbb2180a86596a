"""Reading many small scattered fields with few large reads, as numpy arrays.

libumem keeps its state in linked structures (hash chains of bufctls, slab freelists) spread
over the heap. Following 200,000 of them one read at a time is slow; instead the walkers advance
every chain at once ("frontier" steps): one Gather call reads a field of all current elements,
touching each page once. Pages read are kept for the life of the Gather, so the following steps
of the same walk cost only numpy indexing.
"""

from __future__ import annotations

from mdbpy.errors import ReadError

PAGE = 4096
MAX_BYTES = 1 << 30  # a walk that wants more than this from one Gather is a corrupt one


class Gather:
    def __init__(self, mem):
        import numpy as np

        self.mem = mem
        self._starts = np.zeros(0, np.uint64)  # page-aligned run starts, sorted
        self._ends = np.zeros(0, np.uint64)
        self._offs = np.zeros(0, np.int64)  # run start's offset in self._buf
        self._buf = np.zeros(0, np.uint8)
        self.unreadable: list[tuple[int, int]] = []

    def _load(self, pages) -> None:
        """Read the pages (sorted unique page numbers) not read before."""
        import numpy as np

        if len(self._starts):
            addrs = pages.astype(np.uint64) * np.uint64(PAGE)
            i = np.searchsorted(self._starts, addrs, side="right") - 1
            have = (i >= 0) & (addrs < self._ends[np.maximum(i, 0)])
            pages = pages[~have]
        if not len(pages):
            return
        # runs of consecutive pages
        brk = np.nonzero(np.diff(pages) != 1)[0] + 1
        firsts = np.concatenate(([0], brk))
        lasts = np.concatenate((brk, [len(pages)])) - 1
        chunks, starts, ends = [self._buf], [], []
        off = len(self._buf)
        offs = []
        for f, last in zip(firsts.tolist(), lasts.tolist()):
            a, b = int(pages[f]) * PAGE, (int(pages[last]) + 1) * PAGE
            if off + (b - a) > MAX_BYTES:
                raise ReadError(a, b - a, "too much memory for one walk (corrupt structures?)")
            data = bytearray()
            for addr, piece in self.mem.blocks(a, b, failed=self.unreadable):
                data += bytes(addr - a - len(data)) + piece
            data += bytes(b - a - len(data))
            chunks.append(np.frombuffer(bytes(data), np.uint8))
            starts.append(a)
            ends.append(b)
            offs.append(off)
            off += b - a
        self._buf = np.concatenate(chunks)
        order = np.argsort(np.concatenate((self._starts, np.array(starts, np.uint64))))
        self._starts = np.concatenate((self._starts, np.array(starts, np.uint64)))[order]
        self._ends = np.concatenate((self._ends, np.array(ends, np.uint64)))[order]
        self._offs = np.concatenate((self._offs, np.array(offs, np.int64)))[order]

    def read(self, addrs, size: int, dtype: str):
        """The `size`-byte little-endian values at each address, as dtype (e.g. '<u8')."""
        import numpy as np

        addrs = np.asarray(addrs, dtype=np.uint64)
        if not len(addrs):
            return np.zeros(0, dtype)
        first = addrs // np.uint64(PAGE)
        last = (addrs + np.uint64(size - 1)) // np.uint64(PAGE)
        pages = np.unique(np.concatenate((first, last)))
        self._load(pages)
        i = np.searchsorted(self._starts, addrs, side="right") - 1
        pos = self._offs[i] + (addrs - self._starts[i]).astype(np.int64)
        raw = self._buf[pos[:, None] + np.arange(size)]
        return raw.reshape(-1).view(dtype).copy()

    def u64(self, addrs):
        return self.read(addrs, 8, "<u8")

    def field(self, addrs, bound_field):
        """A scalar field of a bound struct at each struct address."""
        import numpy as np

        f = bound_field
        dt = f"<{'i' if f.signed and f.kind != 'ptr' else 'u'}{f.size}"
        return self.read(np.asarray(addrs, np.uint64) + np.uint64(f.offset), f.size, dt)
