"""Walking libumem's linked lists when they may be damaged, and the record of what was not
trusted.

A debugger is pointed at heaps that are already broken: a smashed slab pointer, a freelist
made cyclic by a double free, a wild bufctl. Every list walk here is bounded and detects
cycles; when it meets garbage it says where (`umem: cache 0x... slab list: cycle at 0x...`),
keeps what it read so far and, for the doubly linked rings (the cache list, a cache's slabs,
an arena's segments), walks back from the anchor to recover the nodes behind the break. The
regions whose metadata could not be trusted are kept per session state, so that ::findleaks
names them (Allocator.untrusted()) instead of silently reporting an incomplete count.
"""

from __future__ import annotations

from mdbpy.errors import ReadError

MAX_WARNINGS = 20  # warnings printed per session state; the rest are counted
MAX_REGIONS = 1000  # regions kept for findleaks, whatever the damage


class Damage:
    """Damage found in one session state: why -> [start, end) region, each warned once."""

    def __init__(self, session):
        self.session = session
        self.found: dict[str, tuple[int, int]] = {}
        self.unreported = 0

    def report(self, start: int, end: int, why: str) -> None:
        if why in self.found:
            return
        if len(self.found) >= MAX_REGIONS:
            self.unreported += 1
            return
        self.found[why] = (start, end)
        if len(self.found) <= MAX_WARNINGS:
            self.session.warn(f"umem: {why}")
        elif len(self.found) == MAX_WARNINGS + 1:
            self.session.warn("umem: more damage found; ::findleaks lists every region")

    def regions(self) -> list[tuple[int, int, str]]:
        out = [(a, b, why) for why, (a, b) in self.found.items()]
        if self.unreported:
            out.append((0, 0, f"{self.unreported} more damaged structures"))
        return out


def damage(session) -> Damage:
    """The session's damage record (dropped with the session cache when the target changes)."""
    d = session.cache.get("umem_damage")
    if d is None:
        d = session.cache["umem_damage"] = Damage(session)
    return d


def _read(umem, b, addr: int):
    try:
        return b.view(umem.mem, addr)
    except ReadError:
        return None


def walk_ring(umem, what: str, anchor: int, struct: str, nxt: str, prv: str, limit: int,
              kind: str, owner: tuple[str, int] | None = None) -> list:
    """The nodes (views) of a circular doubly linked list anchored at `anchor` (the anchor
    itself left out), in list order.

    A node is trusted when it is readable, not seen before, belongs to the list's owner
    (`owner` = (field, value), e.g. a slab's slab_cache) and links back to the node it was
    reached from. At the first untrusted link the forward walk stops, the damage is reported,
    and the walk goes backwards from the anchor until it meets a node already read."""
    b = umem.layouts[struct]
    head = _read(umem, b, anchor)
    if head is None:
        damage(umem.session).report(anchor, anchor + b.size,
                                    f"{what}: unreadable anchor at 0x{anchor:x}")
        return []
    fwd, broken = _walk(umem, b, head, nxt, prv, limit, kind, owner, {anchor}, what, True)
    if not broken:
        return fwd
    seen = {anchor} | {v.addr for v in fwd}
    back, _ = _walk(umem, b, head, prv, nxt, limit - len(fwd), kind, owner, seen, what, False)
    return fwd + back[::-1]


def _walk(umem, b, head, nxt, prv, limit, kind, owner, seen, what, forward):
    """One direction of walk_ring: (nodes, broken). A backward walk stops quietly where it
    joins the forward one and reports only damage of its own."""
    out: list = []
    prev = head
    cur = getattr(head, nxt)
    while cur != head.addr:
        why = None
        node = None
        if cur in seen:
            if not forward:
                return out, False
            why = f"cycle at 0x{cur:x}"
        elif len(out) >= limit:
            why = f"more than {limit} {kind}s"
        elif not cur:
            why = f"NULL link in 0x{prev.addr:x}"
        else:
            node = _read(umem, b, cur)
            if node is None:
                why = f"unreadable {kind} 0x{cur:x} (linked from 0x{prev.addr:x})"
            elif owner is not None and getattr(node, owner[0]) != owner[1]:
                why = (f"{kind} 0x{cur:x} belongs to 0x{getattr(node, owner[0]):x}, "
                       f"not 0x{owner[1]:x}")
            elif getattr(node, prv) != prev.addr:
                why = f"{kind} 0x{cur:x} does not link back to 0x{prev.addr:x}"
        if why is not None:
            damage(umem.session).report(prev.addr, prev.addr + b.size, f"{what}: {why}")
            return out, True
        seen.add(cur)
        out.append(node)
        prev = node
        cur = getattr(node, nxt)
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
