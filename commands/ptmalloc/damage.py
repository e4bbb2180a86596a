"""What a walk met as garbage: where, what, and the memory it can no longer trust.

Every walk of glibc's structures (the arena ring, a thread arena's heap_info chain, the chunks
of a heap, each free list) is bounded and cycle-safe; when it meets damage it records one
Damage and goes on with what it can still trust. A Damage is printed once per stop of the
target as a warning (`ptmalloc: arena 0x... fastbin[2]: cycle at 0x...`), listed by
::ptmalloc_verify, and its region is what PtmallocAllocator.untrusted() gives findleaks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Damage:
    """owner: 'arena 0x...' or 'tcache 0x...'; addr: the chunk or word concerned (verify's
    address); text: what was met, e.g. 'fastbin[2]: cycle at 0x...'; [start, end): the
    memory not trusted because of it (empty when nothing is lost, e.g. a recovered arena)."""

    owner: str
    addr: int
    text: str
    start: int
    end: int

    @property
    def warning(self) -> str:
        return f"ptmalloc: {self.owner} {self.text}"


def arena_owner(addr: int) -> str:
    return f"arena 0x{addr:x}"


def tcache_owner(addr: int) -> str:
    return f"tcache 0x{addr:x}"


def pointer_fault(mem, ptr: int, heaps) -> str | None:
    """Why ptr cannot be a chunk link: misaligned, unmapped, or outside every heap; None
    when it is a plausible chunk address."""
    if ptr & 15:
        return "is misaligned"
    if mem.mapping_at(ptr) is None:
        return "points to unmapped memory"
    if not any(a <= ptr < b for a, b in heaps):
        return "points outside the heaps"
    return None


def warn_once(session, message: str, seen_key: str) -> None:
    """Print message as a warning once per stop of the target (the cache is per stop)."""
    shown = session.cache.setdefault(seen_key, set())
    if message not in shown:
        shown.add(message)
        session.warn(message)


def report(session, damage: list[Damage], seen_key: str) -> None:
    """Print each damage as a warning once per stop of the target."""
    for d in damage:
        warn_once(session, d.warning, seen_key)
