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
from mdbpy.heap.gather import cut_fields, session_gather


def damage(session) -> DamageLog:
    """The session's umem damage log (dropped with the session cache when the target
    changes)."""
    return DamageLog.of(session, "umem")


def _read(umem, b, addr: int):
    """The struct at addr as a view, read through the session's Gather (None: unreadable)."""
    raw = session_gather(umem.session).bytes_at(addr, b.size)
    return None if raw is None else b.from_bytes(raw, addr, umem.mem)


def walk_ring(umem, what: str, anchor: int, struct: str, nxt: str, prv: str, limit: int,
              kind: str, owner: tuple[str, int] | None = None, fields: tuple[str, ...] = ()):
    """(nodes, columns, ok): the node addresses of a circular doubly linked list anchored at
    `anchor` (the anchor itself left out), in list order (mdbpy/heap/walk.py's ring: a break
    is reported and the nodes behind it recovered from the other end), with the named fields
    of each node read on the way ({name: array}, ok: which nodes' fields could be read).
    Tens of thousands of slabs are walked this way, compiled (Gather.walk) over the pages
    every walk of the operation shares; `owner` = (field, value), e.g. a slab's slab_cache,
    is the owner every node must name."""
    import numpy as np

    links = _Links(umem, struct, nxt, prv, owner[0] if owner else None, fields)
    nodes, breaks = walk.ring(anchor, links, limit, kind, owner[1] if owner else None)
    for b in breaks:
        at = anchor if b.prev is None else b.prev
        damage(umem.session).report(at, at + links.size, f"{what}: {b.why}")
    addrs, rows, ok = (np.concatenate(x) for x in zip(*links.parts)) if links.parts else (
        np.zeros(0, np.uint64), np.zeros((0, links.rn), np.uint8), np.zeros(0, bool))
    order = np.argsort(addrs)  # the walks' rows in list order (a node is met once)
    at = order[np.searchsorted(addrs, np.array(nodes, np.uint64), sorter=order)]
    return nodes, cut_fields(rows[at], links.fields, links.rlo), ok[at]


class _Links:
    """A node's link fields (next, prev[, owner]) for walk.ring: read in Python for the
    anchor, and the walk itself compiled over the session's Gather, whose pages every walk
    of the operation shares (the slabs of thirty caches sit in the same few pages of the slab
    cache, read once rather than once per walk). parts: (addresses, rows of the wanted
    fields, ok) of each compiled walk."""

    def __init__(self, umem, struct: str, nxt: str, prv: str, owner: str | None, fields):
        b = umem.layouts[struct]
        self.size = b.size
        self.offs = [b.offset(n) for n in (nxt, prv, owner) if n is not None]
        self.lo = min(self.offs)
        self.n = max(self.offs) + 8 - self.lo
        self.fields = {n: b.field(n) for n in fields}
        self.rlo = min((f.offset for f in self.fields.values()), default=0)
        self.rn = max((f.offset + f.size for f in self.fields.values()), default=0) - self.rlo
        self.gather = session_gather(umem.session)
        self.parts: list = []

    def __call__(self, addr: int) -> tuple[int, ...] | None:
        raw = self.gather.bytes_at(addr + self.lo, self.n)
        if raw is None:
            return None
        return tuple(int.from_bytes(raw[o - self.lo:o - self.lo + 8], "little")
                     for o in self.offs)

    def one_way(self, anchor, cur, step, limit, owner, seen, forward):
        own = self.offs[2] if owner is not None else -1
        addrs, rows, ok, stop = self.gather.walk(
            cur, limit, lo=self.lo, n=self.n, nxt=self.offs[step], back=self.offs[1 - step],
            own=own, owner=owner or 0, anchor=anchor, ring=True, forward=forward, prev=anchor,
            seen=seen, rlo=self.rlo, rn=self.rn)
        self.parts.append((addrs, rows, ok))
        return addrs.tolist(), stop


def chain_addrs(umem, what: str, first: int, struct: str, nxt: str, limit: int,
                kind: str) -> list[int]:
    """The node addresses of a NULL-terminated singly linked list (each node read whole),
    bounded and cycle-safe (mdbpy/heap/walk.py's chain, compiled: depots hold tens of
    thousands of magazines); damage ends the walk and is reported."""
    b = umem.layouts[struct]
    nodes, broke = walk.chain(first, _Chain(umem, b.size, b.offset(nxt)), None, limit, kind)
    if broke is not None:
        at = broke.cur if broke.prev is None else broke.prev
        damage(umem.session).report(at, at + b.size, f"{what}: {broke.why}")
    return nodes


class _Chain:
    """walk.chain's compiled reader of whole nodes of `size` bytes linked at offset nxt."""

    def __init__(self, umem, size: int, nxt: int):
        self.gather, self.size, self.nxt = session_gather(umem.session), size, nxt

    def chain(self, first, limit, end):
        addrs, _rows, _ok, stop = self.gather.walk(first, limit, lo=0, n=self.size,
                                                   nxt=self.nxt, anchor=end)
        return addrs.tolist(), stop


def walk_chain(umem, what: str, first: int, struct: str, nxt: str, limit: int,
               kind: str) -> list:
    """The nodes (views) of chain_addrs' list."""
    b = umem.layouts[struct]
    return [_read(umem, b, a) for a in chain_addrs(umem, what, first, struct, nxt, limit, kind)]
