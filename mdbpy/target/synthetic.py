"""A target made of byte segments: for tests, and the in-memory form of the simulator's heaps."""

from __future__ import annotations

import bisect

from mdbpy.errors import ReadError, WriteError
from mdbpy.target.base import Mapping, Target, Thread


class SyntheticTarget(Target):
    """Segments of bytes at addresses, with optional threads and auxv.

    segments: iterable of (Mapping, bytes) or (start, bytes[, perms[, path]]). Segment data shorter
    than the mapping reads as zeros (like bss); segments must not overlap.
    """

    kind = "synthetic"

    def __init__(self, segments, threads=(), auxv=None, writable=False, name="synthetic"):
        self._maps: list[Mapping] = []
        self._data: list[bytearray] = []
        for seg in segments:
            if isinstance(seg[0], Mapping):
                m, data = seg
            else:
                start, data, *rest = seg
                perms = rest[0] if rest else "rw-p"
                path = rest[1] if len(rest) > 1 else ""
                m = Mapping(start, start + len(data), perms, path=path)
            buf = bytearray(data[: m.size])
            buf.extend(bytes(m.size - len(buf)))
            self._maps.append(m)
            self._data.append(buf)
        order = sorted(range(len(self._maps)), key=lambda i: self._maps[i].start)
        self._maps = [self._maps[i] for i in order]
        self._data = [self._data[i] for i in order]
        for a, b in zip(self._maps, self._maps[1:]):
            if a.end > b.start:
                raise ValueError(f"overlapping segments at 0x{b.start:x}")
        self._starts = [m.start for m in self._maps]
        self._threads = list(threads)
        self._auxv = dict(auxv or {})
        self.writable = writable
        self.name = name

    def mappings(self) -> list[Mapping]:
        return list(self._maps)

    def _locate(self, addr: int):
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self._maps[i].contains(addr):
            return i
        return None

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        cur, end = addr, addr + size
        while cur < end:
            i = self._locate(cur)
            if i is None:
                raise ReadError(addr, size, "no mapping")
            m = self._maps[i]
            n = min(end, m.end) - cur
            out += self._data[i][cur - m.start: cur - m.start + n]
            cur += n
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        if not self.writable:
            super().write(addr, data)
        cur = addr
        view = memoryview(data)
        while view:
            i = self._locate(cur)
            if i is None:
                raise WriteError(cur, len(view), "no mapping")
            m = self._maps[i]
            n = min(len(view), m.end - cur)
            self._data[i][cur - m.start: cur - m.start + n] = view[:n]
            view = view[n:]
            cur += n

    def threads(self) -> list[Thread]:
        return list(self._threads)

    def auxv(self) -> dict[int, int]:
        return dict(self._auxv)

    def describe(self) -> str:
        return self.name
