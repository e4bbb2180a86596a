"""The address space: typed reads over any target, and block reads for vectorized scans.

Everything above the target reads memory through here. Small reads (a word, a struct) go straight
to the target; scans use blocks() / words(), which read whole mappings in large pieces and hand
back numpy arrays, so no hot path loops over words in Python.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator

from mdbpy.errors import MdbError, ReadError
from mdbpy.target.base import Mapping, Target

BLOCK = 4 << 20  # bytes per block in scans: large enough to amortise syscalls, small for RSS
LIST_MAX = 1 << 20  # elements of a linked list followed before calling the list corrupt


TAP_MIN = 64 << 10  # reads at least this large are shown to the tap


class AddressSpace:
    def __init__(self, target: Target):
        self.target = target
        # while set, called as tap(addr, data) with every read of TAP_MIN bytes or more: the
        # heap engine keeps what the allocators' walks read (mdbpy/heap/prescan.py)
        self.tap = None
        self._maps: list[Mapping] | None = None
        self._starts: list[int] = []

    # -- mappings -------------------------------------------------------------------------
    def mappings(self) -> list[Mapping]:
        if self._maps is None:
            self._maps = sorted(self.target.mappings(), key=lambda m: m.start)
            self._starts = [m.start for m in self._maps]
        return self._maps

    def refresh(self) -> None:
        self.target.refresh()
        self._maps = None

    def mapping_at(self, addr: int) -> Mapping | None:
        maps = self.mappings()
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and maps[i].contains(addr):
            return maps[i]
        return None

    # -- reads ----------------------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        if size < 0 or addr < 0 or addr + size > 1 << 64:
            raise ReadError(addr & ((1 << 64) - 1), max(size, 0), "address out of range")
        if size == 0:
            return b""
        data = self.target.read(addr, size)
        if self.tap is not None and size >= TAP_MIN:
            self.tap(addr, data)
        return data

    def read_rows(self, addrs, size: int):
        """The target's fast path for many small reads (Target.read_rows), or None."""
        return self.target.read_rows(addrs, size)

    def read_uint(self, addr: int, size: int) -> int:
        return int.from_bytes(self.read(addr, size), "little")

    def read_int(self, addr: int, size: int) -> int:
        return int.from_bytes(self.read(addr, size), "little", signed=True)

    def read_ptr(self, addr: int) -> int:
        return self.read_uint(addr, 8)

    def follow(self, start: int, offset: int = 0, limit: int | None = None):
        """Yield start and each element reached through the pointer at `offset` (a singly
        linked list: ::list, ::walk list, Value.list): to NULL or an element already seen, at
        most `limit` elements when given, else an error past LIST_MAX (a list that long is a
        corrupt one), and a one-line error at a next pointer that cannot be read."""
        seen = set()
        cur = start
        while cur and cur not in seen:
            if limit is not None and len(seen) >= limit:
                return
            if len(seen) >= LIST_MAX:
                raise MdbError(f"list at 0x{start:x}: stopped after {LIST_MAX} elements")
            seen.add(cur)
            yield cur
            try:
                cur = self.read_ptr(cur + offset)
            except ReadError as e:
                raise MdbError(f"list at 0x{start:x}: element 0x{cur:x}: {e}") from None

    def read_u8(self, addr: int) -> int:
        return self.read(addr, 1)[0]

    def read_u16(self, addr: int) -> int:
        return self.read_uint(addr, 2)

    def read_u32(self, addr: int) -> int:
        return self.read_uint(addr, 4)

    def read_u64(self, addr: int) -> int:
        return self.read_uint(addr, 8)

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """Bytes up to (not including) the first NUL, reading page-wise so a string that ends
        just before an unmapped page is still read."""
        out = bytearray()
        cur = addr
        while len(out) < limit:
            n = min(limit - len(out), 4096 - (cur & 4095))
            try:
                chunk = self.read(cur, n)
            except ReadError:
                if not out and cur == addr:
                    raise
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return bytes(out)
            out += chunk
            cur += n
        return bytes(out)

    def unpack(self, fmt: str, addr: int) -> tuple:
        return struct.unpack("<" + fmt, self.read(addr, struct.calcsize("<" + fmt)))

    def write(self, addr: int, data: bytes) -> None:
        self.target.write(addr, data)

    # -- block reads for scans ------------------------------------------------------------
    def blocks(self, start: int, end: int, block: int = BLOCK,
               failed: list | None = None) -> Iterator[tuple[int, bytes]]:
        """(addr, bytes) pieces of [start, end) in large reads. A block that cannot be read
        is retried page by page, so one bad page does not hide the rest of a mapping; a hole
        whose end the target knows (ReadError.until: a core segment's bytes that no file
        holds) is passed over at once, so a segment claiming terabytes it does not hold costs
        a read, not a read per page. What was passed over is appended to `failed` as
        (start, end) when a list is given."""
        cur = start
        while cur < end:
            n = min(block, end - cur)
            try:
                data = self.read(cur, n)
            except ReadError:
                pass
            else:
                yield cur, data
                cur += n
                continue
            stop = cur + n
            while cur < stop:
                m = min(4096 - (cur & 4095), stop - cur)
                try:
                    piece = self.read(cur, m)
                except ReadError as e:
                    skip = min(end, max(cur + m, e.until or 0))
                    if failed is not None:
                        if failed and failed[-1][1] == cur:
                            failed[-1] = (failed[-1][0], skip)
                        else:
                            failed.append((cur, skip))
                    cur = skip
                else:
                    yield cur, piece
                    cur += m

    def words(self, addr: int, count: int):
        """`count` 64-bit little-endian words at addr as a numpy uint64 array."""
        import numpy as np

        return np.frombuffer(self.read(addr, count * 8), dtype="<u8")
