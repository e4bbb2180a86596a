"""Bounded, cycle-safe walks of linked lists in a target that may be broken, for every
allocator.

A debugger is pointed at heaps that are already damaged: a free list made cyclic by a double
free, a smashed next pointer, a ring cut in the middle. Every walk here stops at the first link
it cannot trust and says where (a Break: why, the node whose link is at fault, the address it
led to), keeping what it read so far; the caller reports the break in its allocator's words
(mdbpy/heap/damage.py) and decides what the rest of the list is worth. A doubly linked ring
then resumes from its other end: walking back from the anchor recovers the nodes behind the
break, as mdb's walkers say "walk resumes at".

Reading is the caller's: `read(addr)` returns a node (or None when unreadable), so a walk
reads through whatever cache the operation shares (mdbpy/heap/gather.py's bytes_at).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Break:
    """Where a walk stopped trusting the list: why (e.g. 'cycle at 0x...'), prev, the node
    whose link led there (None: the list's head), cur, where it led, and cause, one of
    CAUSES, for callers that word some breaks their own way."""

    why: str
    prev: int | None
    cur: int
    cause: str


CAUSES = ("cycle", "limit", "check", "unreadable", "null", "owner", "backlink")


def chain(first: int, read: Callable, nxt: Callable, limit: int, kind: str,
          check: Callable | None = None, end: int = 0) -> tuple[list, Break | None]:
    """(nodes, break) of a singly linked list from `first`: read(addr) gives a node or None
    (unreadable), nxt(node) its next address, check(addr) why an address cannot be a node
    before it is read (None when it can). The list ends at NULL, or, for a singly linked
    ring (end = first), when it comes back to its first node; in a ring a NULL link is a
    link like any other, checked and read. At most `limit` nodes; a repeated node is a
    cycle."""
    out: list = []
    seen: set[int] = set()
    cur, prev = first, None
    while not (cur == end and (end == 0 or out)):
        if cur in seen:
            return out, Break(f"cycle at 0x{cur:x}", prev, cur, "cycle")
        if len(out) >= limit:
            return out, Break(f"more than {limit} {kind}s", prev, cur, "limit")
        why = check(cur) if check is not None else None
        if why is not None:
            return out, Break(why, prev, cur, "check")
        node = read(cur)
        if node is None:
            linked = f" (linked from 0x{prev:x})" if prev is not None else ""
            return out, Break(f"unreadable {kind} 0x{cur:x}{linked}", prev, cur, "unreadable")
        seen.add(cur)
        out.append(node)
        prev, cur = cur, nxt(node)
    return out, None


def ring(anchor: int, links: Callable, limit: int, kind: str,
         owner: int | None = None) -> tuple[list[int], list[Break]]:
    """(node addresses in list order, breaks) of a circular doubly linked list anchored at
    `anchor` (left out). links(addr) gives a node's (next, prev[, owner]) or None when it is
    unreadable; a node is trusted when it is readable, new, belongs to `owner` (when given)
    and links back to the node it was reached from. At the first untrusted link the forward
    walk stops and the walk goes backwards from the anchor until it meets a node already
    read: the breaks are the forward one and any the backward walk meets on its own."""
    head = links(anchor)
    if head is None:
        return [], [Break(f"unreadable anchor at 0x{anchor:x}", None, anchor, "unreadable")]
    fwd, broken = _one_way(anchor, head[0], links, 0, 1, limit, kind, owner, {anchor}, True)
    if broken is None:
        return fwd, []
    seen = {anchor} | set(fwd)
    back, more = _one_way(anchor, head[1], links, 1, 0, limit - len(fwd), kind, owner, seen,
                          False)
    return fwd + back[::-1], [broken] + ([more] if more else [])


def _one_way(anchor, cur, links, step, back, limit, kind, owner, seen, forward):
    """One direction of ring(), following field `step` (0 next, 1 prev) and checking that
    field `back` links to where it came from: (addresses, break or None). A backward walk
    stops quietly where it joins the forward one."""
    out: list[int] = []
    prev = anchor
    while cur != anchor:
        why = cause = None
        node = None
        if cur in seen:
            if not forward:
                return out, None
            why, cause = f"cycle at 0x{cur:x}", "cycle"
        elif len(out) >= limit:
            why, cause = f"more than {limit} {kind}s", "limit"
        elif not cur:
            why, cause = f"NULL link in 0x{prev:x}", "null"
        else:
            node = links(cur)
            if node is None:
                why, cause = f"unreadable {kind} 0x{cur:x} (linked from 0x{prev:x})", "unreadable"
            elif owner is not None and node[2] != owner:
                why = f"{kind} 0x{cur:x} belongs to 0x{node[2]:x}, not 0x{owner:x}"
                cause = "owner"
            elif node[back] != prev:
                why, cause = f"{kind} 0x{cur:x} does not link back to 0x{prev:x}", "backlink"
        if why is not None:
            return out, Break(why, prev, cur, cause)
        seen.add(cur)
        out.append(cur)
        prev = cur
        cur = node[step]
    return out, None
