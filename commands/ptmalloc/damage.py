"""What a walk met as garbage: where, what, and the memory it can no longer trust.

Every walk of glibc's structures (the arena ring, a thread arena's heap_info chain, the chunks
of a heap, each free list) is bounded and cycle-safe; when it meets damage it records one
Damage (mdbpy/heap/damage.py) and goes on with what it can still trust. A Damage is printed once per stop of the
target as a warning (`ptmalloc: arena 0x... fastbin[2]: cycle at 0x...`), listed by
::ptmalloc_verify, and its region is what PtmallocAllocator.untrusted() gives findleaks.
"""

from __future__ import annotations


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
