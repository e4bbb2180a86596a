"""Generic walkers: the target's threads, and singly linked lists through a next pointer.

Lists in a broken program can be cyclic or run into wild pointers, so a walk stops at a NULL,
at its starting element (circular lists), at the first repeated element, after
`mdbpy.memory.LIST_MAX` elements, or with a one-line error at the first next pointer it cannot
read.
"""

from __future__ import annotations

from mdbpy.dcmd import walker
from mdbpy.session import WALKLIMIT, setting


def walk_limit(session) -> int:
    """The session's walk cap (0 when there is none)."""
    return int(setting(session.settings, WALKLIMIT))


def capped(session, addrs):
    """addrs, cut after the session's walk limit with a one-line note saying how to lift it."""
    limit = walk_limit(session)
    for n, addr in enumerate(addrs):
        if limit and n == limit:
            session.warn(f"walk stopped after {limit} elements (walklimit; "
                         f"::set -o walklimit=0 lifts it)")
            return
        yield addr


def follow_list(session, start: int, offset: int = 0, limit: int | None = None):
    """Yield start and each element reached through the pointer at `offset` (see
    AddressSpace.follow: to NULL, a repeat, `limit` or an error past LIST_MAX)."""
    return session.mem.follow(start, offset, limit)


@walker("list", "walk a singly linked list whose next pointer is its first word",
        needs_addr=True, help="""\
addr::walk list yields addr and every element reached by following the pointer stored in the
first word of each element, until NULL, a return to an element already seen (circular or
corrupted lists), or an unreadable pointer. For a next pointer at another offset use
`addr::list -o OFFSET`.""")
def walk_list(session, addr):
    return follow_list(session, addr)


@walker("thread", "walk the target's threads (their thread ids)")
def walk_thread(session, addr):
    """Each thread's id, in the target's order (the first is the main thread in a core)."""
    for t in session.target.threads():
        yield t.tid
