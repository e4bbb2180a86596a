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
reads through whatever cache the operation shares (mdbpy/heap/gather.py's bytes_at). A reader
may also walk compiled (its `chain` or `one_way` method: Gather.walk, for lists of tens of
thousands of nodes), repeating these checks in their order and handing back only where it
stopped; the Break is worded here either way (_break).
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
    if check is None and hasattr(read, "chain"):
        out, stop = read.chain(first, limit, end)
        return out, stop and _break(*stop, kind, limit)
    out: list = []
    seen: set[int] = set()
    cur, prev = first, None
    while not (cur == end and (end == 0 or out)):
        cause = why = None
        if cur in seen:
            cause = "cycle"
        elif len(out) >= limit:
            cause = "limit"
        elif check is not None and (why := check(cur)) is not None:
            return out, Break(why, prev, cur, "check")
        else:
            node = read(cur)
            if node is None:
                cause = "unreadable"
        if cause is not None:
            return out, _break(cause, prev, cur, None, kind, limit)
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
    if hasattr(links, "one_way"):
        out, stop = links.one_way(anchor, cur, step, limit, owner, seen, forward)
        return out, stop and _break(*stop, kind, limit, owner)
    out: list[int] = []
    prev = anchor
    while cur != anchor:
        cause = node = None
        if cur in seen:
            if not forward:
                return out, None
            cause = "cycle"
        elif len(out) >= limit:
            cause = "limit"
        elif not cur:
            cause = "null"
        else:
            node = links(cur)
            if node is None:
                cause = "unreadable"
            elif owner is not None and node[2] != owner:
                cause = "owner"
            elif node[back] != prev:
                cause = "backlink"
        if cause is not None:
            return out, _break(cause, prev, cur, node[2] if cause == "owner" else None, kind,
                              limit, owner)
        seen.add(cur)
        out.append(cur)
        prev = cur
        cur = node[step]
    return out, None


def _break(cause: str, prev: int | None, cur: int, found: int | None, kind: str, limit: int,
           owner: int | None = None) -> Break:
    """The Break of a walk that stopped at cur (reached from prev) for `cause`; found: the
    owner the node names (cause 'owner')."""
    why = {"cycle": f"cycle at 0x{cur:x}", "limit": f"more than {limit} {kind}s",
           "null": f"NULL link in 0x{prev or 0:x}",
           "owner": f"{kind} 0x{cur:x} belongs to 0x{found or 0:x}, not 0x{owner or 0:x}",
           "backlink": f"{kind} 0x{cur:x} does not link back to 0x{prev or 0:x}",
           "unreadable": f"unreadable {kind} 0x{cur:x}" + (
               "" if prev is None else f" (linked from 0x{prev:x})")}[cause]
    return Break(why, prev, cur, cause)
