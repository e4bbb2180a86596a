"""Walking libumem's linked lists when they may be damaged, and the record of what was not
trusted.

A debugger is pointed at heaps that are already broken: a smashed slab pointer, a freelist
made cyclic by a double free, a wild bufctl. Every list walk here is bounded and detects
cycles; when it meets garbage it says where (`umem: cache 0x... slab list: cycle at 0x...`),
keeps what it read so far and, for the doubly linked rings (the cache list, a cache's slabs,
an arena's segments), walks back from the anchor to recover the nodes behind the break. The
regions whose metadata could not be trusted go to the session's DamageLog
(mdbpy/heap/damage.py), so that ::findleaks names them instead of silently reporting an
incomplete count.
"""

from __future__ import annotations

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
    itself left out), in list order.

    A node is trusted when it is readable, not seen before, belongs to the list's owner
    (`owner` = (field, value), e.g. a slab's slab_cache) and links back to the node it was
    reached from. At the first untrusted link the forward walk stops, the damage is reported,
    and the walk goes backwards from the anchor until it meets a node already read. Only the
    link fields are read (tens of thousands of slabs are walked this way)."""
    links = _Links(umem, struct, nxt, prv, owner[0] if owner else None)
    head = links.read(anchor)
    if head is None:
        damage(umem.session).report(anchor, anchor + links.size,
                                    f"{what}: unreadable anchor at 0x{anchor:x}")
        return []
    want = owner[1] if owner else None
    fwd, broken = _walk(umem, links, anchor, head[0], 0, 1, limit, kind, want, {anchor}, what,
                        True)
    if not broken:
        return fwd
    seen = {anchor} | set(fwd)
    back, _ = _walk(umem, links, anchor, head[1], 1, 0, limit - len(fwd), kind, want, seen,
                    what, False)
    return fwd + back[::-1]


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


def _walk(umem, links, anchor, cur, step, back, limit, kind, owner, seen, what, forward):
    """One direction of walk_ring, following field `step` (0 next, 1 prev) and checking field
    `back` links to where it came from: (addresses, broken). A backward walk stops quietly
    where it joins the forward one and reports only damage of its own."""
    out: list[int] = []
    prev = anchor
    while cur != anchor:
        why = None
        node = None
        if cur in seen:
            if not forward:
                return out, False
            why = f"cycle at 0x{cur:x}"
        elif len(out) >= limit:
            why = f"more than {limit} {kind}s"
        elif not cur:
            why = f"NULL link in 0x{prev:x}"
        else:
            node = links.read(cur)
            if node is None:
                why = f"unreadable {kind} 0x{cur:x} (linked from 0x{prev:x})"
            elif owner is not None and node[2] != owner:
                why = f"{kind} 0x{cur:x} belongs to 0x{node[2]:x}, not 0x{owner:x}"
            elif node[back] != prev:
                why = f"{kind} 0x{cur:x} does not link back to 0x{prev:x}"
        if why is not None:
            damage(umem.session).report(prev, prev + links.size, f"{what}: {why}")
            return out, True
        seen.add(cur)
        out.append(cur)
        prev = cur
        cur = node[step]
    return out, False


def walk_chain(umem, what: str, first: int, struct: str, nxt: str, limit: int,
               kind: str) -> list:
    """The nodes (views) of a NULL-terminated singly linked list, bounded and cycle-safe;
    damage ends the walk and is reported."""
    b = umem.layouts[struct]
    out: list = []
    seen: set[int] = set()
    cur, prev = first, None
    while cur:
        why = None
        node = None
        if cur in seen:
            why = f"cycle at 0x{cur:x}"
        elif len(out) >= limit:
            why = f"more than {limit} {kind}s"
        else:
            node = _read(umem, b, cur)
            if node is None:
                why = f"unreadable {kind} 0x{cur:x}" + (
                    f" (linked from 0x{prev:x})" if prev else "")
        if why is not None:
            at = prev if prev else cur
            damage(umem.session).report(at, at + b.size, f"{what}: {why}")
            break
        seen.add(cur)
        out.append(node)
        prev, cur = cur, getattr(node, nxt)
    return out
