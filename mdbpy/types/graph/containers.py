"""The typegraph's containers: a buffer's struct recognised by its size and a member.

A typed pointer into the middle of a buffer (a `struct list_head *` to the `link` member of a
malloc'd `struct conn`, as in the Linux kernel's and nginx's intrusive lists) is often the
only evidence a buffer has. mdb's typegraph then looks at the sizes: the buffer is a struct
whose size fits it and that holds a member of the pointer's type at that offset. Here, soundly:

- "fits" is the allocator's range of requests that buffer could have served
  (Allocator.request_sizes: glibc's request2size, a size class, a cache's object size), not
  the buffer's size; a buffer whose allocator cannot say is never typed this way;
- the candidates are every complete named struct and union (and typedef of an anonymous one)
  of every loaded object's DWARF (DwarfTypes.sized, cached beside the type index), one per
  catalog type (typedefs and the same struct in every unit are one), whose size is in that
  range and that hold a member, nested member or array element of the pointer's type (or one
  starting with it) there; a struct with a trailing flexible array competes whenever its
  fixed part is no larger than the range (it may be the buffer, its array making up the rest);
- exactly one candidate types the buffer (HOW "size and member"), which is then evidence like
  any other: it propagates, every other pointer into or to the buffer must agree with it, or
  the buffer is conflicting. Several candidates, or none, leave it unknown. A buffer holding
  an array of small structs (n of them making up the size) is not considered: the rule
  assumes one object per buffer, as the allocation by size does (docs/types.md).

Which type a (range, offset, pointee) names is computed once (type_at) and kept; solve.py asks
for it as evidence arrives, compiled.py hands the answers to the kernel as sorted keys (key()).
A buffer's range is its request bounds packed in one number, with no table of distinct ranges
to build over the heap.
"""

from __future__ import annotations

import bisect

from mdbpy.errors import MdbError
from mdbpy.types.graph.catalog import trailing_array

OFF_BITS, TID_BITS = 24, 20  # a key's word: pointee tid, offset (kernel.c: tg_ckey)
MAX_SIZE = 1 << OFF_BITS  # larger buffers (and requests) are never typed by size


class SizedTypes:
    """Every loaded object's candidate containers, by size, loaded from the DWARF as a size
    range is first asked for, each with whether it ends with a flexible array."""

    def __init__(self, space, catalog):
        self.space, self.catalog = space, catalog
        self._rows: list | None = None  # (size, object number, kind, name), by size
        self._dwarf: list = []  # the objects' DwarfTypes, numbered as in the rows
        self._sizes: list[int] = []
        self._types: list = []  # (type, flexible) per row once loaded, False if unreadable

    def _listing(self) -> list:
        """The rows, listed (DwarfTypes.sized: cached on disk) on first use."""
        if self._rows is None:
            self._dwarf = [d for _, d in self.space.objects()]
            self._rows = sorted(((size, i, kind, name) for i, d in enumerate(self._dwarf)
                                 for size, kind, name in d.sized()), key=lambda r: r[:2])
            self._sizes = [r[0] for r in self._rows]
            self._types = [None] * len(self._rows)
        return self._rows

    @classmethod
    def of(cls, space, catalog) -> SizedTypes:
        """The session's listing, kept with its catalog."""
        return catalog.memo(("sized types",), space, lambda: cls(space, catalog))

    def upto(self, hi: int) -> list:
        """(size, type, flexible) of every candidate no larger than hi; the type is None
        where its DWARF cannot be read (it may still be the buffer's: the caller must not
        take another for the only one)."""
        rows = self._listing()
        out = []
        for i in range(bisect.bisect_right(self._sizes, hi)):
            if self._types[i] is None:
                self._types[i] = self._load(*rows[i][1:])
            out.append((rows[i][0], *(self._types[i] or (None, False))))
        return out

    def _load(self, k: int, kind: str, name: str):
        """(type, flexible) of a row, False when its DWARF cannot be read."""
        try:
            t = self._dwarf[k].type_named(kind, name)
        except MdbError:
            return False
        if t is None:
            return False
        return t, trailing_array(self.catalog, self.catalog.complete(t)) is not None


class Containers:
    """The requests each buffer could have served (lo, hi columns; hi 0: unknown) and the
    container each key names: (range, pointee tid << OFF_BITS | offset), a buffer's range
    being its bounds packed as lo << OFF_BITS | hi (ranges)."""

    def __init__(self, catalog, sizes, requests, sized):
        import numpy as np

        self.sizes = np.ascontiguousarray(sizes, np.uint64)
        self.lo, self.hi = (np.ascontiguousarray(c, np.uint64) for c in requests)
        self.catalog, self.sized = catalog, sized
        # answers depend on the types alone: kept with the catalog for the next graph
        self.found: dict[tuple[int, int], int] = catalog.memo(("containers",), sized, dict)

    def ranges(self, rows):
        """The packed request range of each buffer in rows, -1 where it has none to infer
        from (unknown, or beyond MAX_SIZE); kernel.c's tg_crange says the same per buffer."""
        import numpy as np

        lo, hi = self.lo[rows], self.hi[rows]
        ok = (hi > 0) & (lo <= hi) & (hi < MAX_SIZE) & (self.sizes[rows] < MAX_SIZE)
        return np.where(ok, ((lo << np.uint64(OFF_BITS)) | hi).astype(np.int64), -1)

    @staticmethod
    def key(r: int, off: int, t: int) -> tuple[int, int] | None:
        """The key of a t at offset off of a buffer of request range r; None for a tid past
        TID_BITS."""
        return None if t >= 1 << TID_BITS else (r, t << OFF_BITS | off)

    def type_at(self, key: tuple[int, int]) -> int:
        """The tid of the one container the key's evidence names, -1 for none or several."""
        hit = self.found.get(key)
        if hit is None:
            (r, word), low = key, (1 << OFF_BITS) - 1
            hit = self.found[key] = self._unique(r >> OFF_BITS, r & low, word & low,
                                                 word >> OFF_BITS)
        return hit

    def _unique(self, lo: int, hi: int, off: int, t: int) -> int:
        """The one type that a buffer serving requests [lo, hi] can be with a t at offset
        off (structs of a size in range; smaller ones ending with a flexible array), or -1:
        several (ambiguous), none, one of a size in range whose DWARF cannot be read (it
        may be the one), or a C++ class (only its vtable says)."""
        cat = self.catalog
        found = set()
        for size, typ, flexible in self.sized.upto(hi):
            if typ is None:  # unreadable: it could be the buffer's type, so none is known
                if size >= lo:
                    return -1
                continue
            if size >= lo:
                holds = _holds(cat, typ, off, t)
            else:
                holds = _holds_flexible(cat, typ, off, t) if flexible else None
            if holds is not None:
                found.add(holds)
        if len(found) != 1:
            return -1
        tid = found.pop()
        return -1 if cat[tid].poly else tid  # only a vtable says what a C++ object is


def _holds(cat, typ, off: int, t: int) -> int | None:
    """typ's tid when a typ holds a t at offset off (a member, nested, or an element)."""
    tid = cat.tid_of(typ)
    return tid if tid is not None and cat.has_at(tid, off, t) else None


def _holds_flexible(cat, typ, off: int, t: int) -> int | None:
    """typ's tid when it (a struct ending with a flexible array: a buffer larger than typ may
    be one) holds a t at offset off: in its fixed part, or in an element of its array."""
    tid = cat.tid_of(typ)
    if tid is None or off < cat[tid].size:
        return None if tid is None else _holds(cat, typ, off, t)
    at, element = trailing_array(cat, cat.complete(typ))
    es = cat.complete(element).size or 0
    return tid if es > 0 and off >= at and _holds(cat, element, (off - at) % es, t) is not None \
        else None
