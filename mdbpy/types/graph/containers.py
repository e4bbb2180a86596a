"""The typegraph's containers: a buffer's struct recognised by its size and a member.

A typed pointer into the middle of a buffer (a `struct list_head *` to the `link` member of a
malloc'd `struct conn`, as in the Linux kernel's and nginx's intrusive lists) is often the
only evidence a buffer has. mdb's typegraph then looks at the sizes: the buffer is a struct
whose size fits it and that holds a member of the pointer's type at that offset. Here:

- "fits" is the allocator's range of requests that buffer could have served
  (Allocator.request_sizes: glibc's request2size, a size class under any alignment, a
  cache's object size), not the buffer's size; a buffer whose allocator cannot say is never
  typed this way;
- the candidates are every complete named struct and union (and typedef of an anonymous one)
  of every loaded object's DWARF (DwarfTypes.sized, cached beside the type index), one per
  catalog type (typedefs and the same struct in every unit are one), whose size is in that
  range and that hold a member, nested member or array element of the pointer's type (or one
  starting with it) there; a struct with a trailing flexible array competes whenever its
  fixed part is no larger than the range (it may be the buffer, its array making up the rest);
- exactly one candidate types the buffer (HOW "size and member"), which is then evidence like
  any other: it propagates, every other pointer into or to the buffer must agree with it, or
  the buffer is conflicting. Several candidates, or none, leave it unknown; so does what
  cannot decide: a candidate whose DWARF cannot be read, two definitions of one catalog type
  that disagree, an array of a scalar pointee that could fill the buffer (_unique).

What it cannot see (docs/types.md says it in full): an array of small structs reached through
pointers to its elements (the rule assumes one object per buffer, as allocation by size does),
and the types of objects without DWARF, never candidates.

Which type a (range, offset, pointee) names is computed once (type_at) and kept; solve.py asks
for it as evidence arrives, compiled.py hands the answers to the kernel as sorted keys (key()).
A buffer's range is its request bounds packed in one number, with no table of distinct ranges
to build over the heap.
"""

from __future__ import annotations

import bisect

from mdbpy.errors import MdbError
from mdbpy.types.graph.catalog import canonical, trailing_array
from mdbpy.types.model import Struct

OFF_BITS, TID_BITS = 24, 20  # a key's word: pointee tid, offset (kernel.c: tg_ckey)
MAX_SIZE = 1 << OFF_BITS  # larger buffers (and requests) are never typed by size


class SizedTypes:
    """Every loaded object's candidate containers, by size (DwarfTypes.sized), each loaded
    from the DWARF as a range that may hold it is first asked for."""

    def __init__(self, space, catalog):
        self.space, self.catalog = space, catalog
        self._rows: list | None = None  # (size, object number, kind, name, flexible), by size
        self._dwarf: list = []  # the objects' DwarfTypes, numbered as in the rows
        self._sizes: list[int] = []
        self._open: list[int] = []  # the rows that may end with a flexible array (1 or -1)
        self._open_sizes: list[int] = []
        self._types: list = []  # (type, flexible) per row once loaded, False if unreadable

    def _listing(self) -> list:
        """The rows, listed (DwarfTypes.sized: cached on disk) on first use."""
        if self._rows is None:
            self._dwarf = [d for _, d in self.space.objects()]
            self._rows = sorted(((size, i, kind, name, flexible)
                                 for i, d in enumerate(self._dwarf)
                                 for size, kind, name, flexible in d.sized()),
                                key=lambda r: r[:2])
            self._sizes = [r[0] for r in self._rows]
            self._open = [i for i, r in enumerate(self._rows) if r[4]]
            self._open_sizes = [self._rows[i][0] for i in self._open]
            self._types = [None] * len(self._rows)
        return self._rows

    @classmethod
    def of(cls, space, catalog) -> SizedTypes:
        """The session's listing, kept with its catalog."""
        return catalog.memo(("sized types",), space, lambda: cls(space, catalog))

    def within(self, lo: int, hi: int) -> list:
        """(size, type, flexible) of every candidate a buffer serving requests [lo, hi] may
        be: of a size in range, or smaller and ending with a flexible array (or not known not
        to); the type is None where the row's DWARF cannot be read (it may be the buffer's:
        the caller must not take another for the only one). Two bisections: the rows below lo
        that cannot be the buffer are never loaded."""
        rows = self._listing()
        small = self._open[:bisect.bisect_left(self._open_sizes, lo)]
        out = []
        for i in small + list(range(bisect.bisect_left(self._sizes, lo),
                                    bisect.bisect_right(self._sizes, hi))):
            if self._types[i] is None:
                self._types[i] = self._load(*rows[i])
            out.append((rows[i][0], *(self._types[i] or (None, True))))
        return out

    def _load(self, size: int, k: int, kind: str, name: str, flexible: int):
        """(type, flexible) of a row, False when its DWARF cannot be read (or its size could
        not be when it was listed)."""
        if not size:
            return False
        try:
            t = self._dwarf[k].type_named(kind, name)
        except MdbError:
            return False
        if t is None:
            return False
        if flexible != -1:  # the listing said (it builds every struct's members to know)
            return t, bool(flexible)
        return t, trailing_array(self.catalog.complete(t)) is not None


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

    def ranges(self):
        """The packed request range of each buffer, -1 where it has none to infer from
        (unknown, or beyond MAX_SIZE); kernel.c's tg_crange says the same per buffer."""
        import numpy as np

        lo, hi = self.lo, self.hi
        ok = (hi > 0) & (lo <= hi) & (hi < MAX_SIZE) & (self.sizes < MAX_SIZE)
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
        several (ambiguous), none, one whose DWARF cannot be read (it may be the one), two
        definitions of one tid that disagree (_judged), an array of t filling the buffer
        (_array_fits), or a C++ class (only its vtable says)."""
        cat = self.catalog
        if _array_fits(cat, lo, hi, off, t):
            return -1
        judged: dict[int, list] = {}  # tid -> (holds, type) of each definition listed
        for size, typ, flexible in self.sized.within(lo, hi):
            if typ is None:  # unreadable: it could be the buffer's type, so none is known
                return -1
            if size < lo and not flexible:
                continue
            tid = cat.tid_of(typ)
            if tid is not None:
                holds = _holds_flexible(cat, typ, off, t) if flexible else \
                    cat.holds(typ, off, t)
                judged.setdefault(tid, []).append((holds, typ))
        found = [tid for tid, seen in judged.items() if any(h for h, _ in seen)]
        if len(found) != 1 or not _judged(cat, found[0], judged[found[0]]):
            return -1
        tid = found[0]
        return -1 if cat[tid].poly else tid  # only a vtable says what a C++ object is


def _judged(cat, tid: int, seen: list) -> bool:
    """Whether every listed definition of tid (holds, type) holds the pointee and has the
    layout of the definition the catalog propagates for tid: the catalog merges types by
    spelling and size, so a `struct node` of one object and a different one of another are
    one tid, and typing a buffer by it must be true of whichever it is."""
    if not all(h for h, _ in seen):
        return False
    own = cat[tid].type
    others = [typ for _, typ in seen if cat.complete(canonical(typ)) is not own]
    if not others:
        return True
    layout = cat.layout(own)
    return all(cat.layout(typ) == layout for typ in others)


def _array_fits(cat, lo: int, hi: int, off: int, t: int) -> bool:
    """Whether the buffer may be an array of t (not a struct, union or class: a scalar, a
    pointer, an enum, an array) with the pointer at an element: off a multiple of t's size
    and some multiple of it a request in [lo, hi]. Such a buffer (a pointer array, a table of
    longs) is no struct, however unique the struct that fits. An array of structs is weighed
    in docs/types.md."""
    if isinstance(cat[t].type.strip(), Struct):
        return False
    es = cat[t].size
    return off % es == 0 and (hi // es) * es >= lo


def _holds_flexible(cat, typ, off: int, t: int) -> bool:
    """Whether typ (a struct ending with a flexible array: a buffer larger than typ may be
    one) holds a t at offset off: in its fixed part, or in an element of its array."""
    s = cat.complete(canonical(typ))
    if off < s.size and cat.holds(typ, off, t):
        return True
    at, element = trailing_array(s)
    es = cat.complete(element).size or 0
    return es > 0 and off >= at and cat.holds(element, (off - at) % es, t)
