"""Walking libumem's linked lists when they may be damaged, and the record of what was not
trusted.

The walks are mdbpy/heap/walk.py's, bounded and cycle-safe, reading through the session's
Gather; here they get umem's structs and words: meeting garbage says where (`umem: cache 0x...
slab list: cycle at 0x...`), and the doubly linked rings (the cache list, a cache's slabs, an
arena's segments) are recovered from the other end of the break. The
regions whose metadata could not be trusted go to the session's DamageLog
(mdbpy/heap/damage.py), so that ::findleaks names them instead of silently reporting an
incomplete count.
"""

from __future__ import annotations

from mdbpy.heap import walk
from mdbpy.heap.damage import DamageLog
from mdbpy.heap.gather import session_gather


def damage(session) -> DamageLog:
    """The session's umem damage log (dropped with the session cache when the target
    changes)."""
    return DamageLog.of(session, "umem")


def _read(umem, b, addr: int):
    """The struct at addr as a view, read through the session's Gather (None: unreadable)."""
    raw = session_gather(umem.session).bytes_at(addr, b.size)
    return None if raw is None else b.from_bytes(raw, addr, umem.mem)


def walk_ring(umem, what: str, anchor: int, struct: str, nxt: str, prv: str, limit: int,
              kind: str, owner: tuple[str, int] | None = None) -> list[int]:
    """The node addresses of a circular doubly linked list anchored at `anchor` (the anchor
    itself left out), in list order (mdbpy/heap/walk.py's ring: a break is reported and the
    nodes behind it recovered from the other end). Only the link fields are read (tens of
    thousands of slabs are walked this way); `owner` = (field, value), e.g. a slab's
    slab_cache, is the owner every node must name."""
    links = _Links(umem, struct, nxt, prv, owner[0] if owner else None)
    nodes, breaks = walk.ring(anchor, links.read, limit, kind, owner[1] if owner else None)
    for b in breaks:
        at = anchor if b.prev is None else b.prev
        damage(umem.session).report(at, at + links.size, f"{what}: {b.why}")
    return nodes


class _Links:
    """Reads a node's link fields (next, prev[, owner]) through the session's Gather, whose
    pages every walk of the operation shares: the slabs of thirty caches sit in the same few
    pages of the slab cache, read once rather than once per walk."""

    def __init__(self, umem, struct: str, nxt: str, prv: str, owner: str | None):
        b = umem.layouts[struct]
        self.size = b.size
        offs = [b.offset(n) for n in (nxt, prv, owner) if n is not None]
        self.lo = min(offs)
        self.n = max(offs) + 8 - self.lo
        self.offs = [o - self.lo for o in offs]
        self.gather = session_gather(umem.session)

    def read(self, addr: int) -> tuple[int, ...] | None:
        raw = self.gather.bytes_at(addr + self.lo, self.n)
        if raw is None:
            return None
        return tuple(int.from_bytes(raw[o:o + 8], "little") for o in self.offs)


def walk_chain(umem, what: str, first: int, struct: str, nxt: str, limit: int,
               kind: str) -> list:
    """The nodes (views) of a NULL-terminated singly linked list, bounded and cycle-safe
    (mdbpy/heap/walk.py's chain); damage ends the walk and is reported."""
    b = umem.layouts[struct]
    nodes, broke = walk.chain(first, lambda a: _read(umem, b, a), lambda v: getattr(v, nxt),
                              limit, kind)
    if broke is not None:
        at = broke.cur if broke.prev is None else broke.prev
        damage(umem.session).report(at, at + b.size, f"{what}: {broke.why}")
    return nodes
