"""The `jemalloc` dmod: jemalloc 5.3 and 5.2 (redis, Firefox, FreeBSD's libc, Rust's
tikv-jemallocator) as an allocator for the generic heap engines (::findleaks, ::whatis,
::whyalive, ::heap_verify, ::heap_stats), and its own view (::jemalloc, walkers of extents,
regions and arenas).

Loaded automatically when an object of the target defines jemalloc's public API under any
prefix (libjemalloc.so.*, or a static copy: plain, je_, _rjem_), or when the executable embeds
jemalloc's version string and conf path (a static copy stripped of its symbols). Its
structures are found through the object's internal symbols and DWARF, or without them by
heuristics that verify every candidate (state.py, heuristic.py); what cannot be verified is
one line saying so.
"""

from .allocator import JemallocAllocator

DMOD_NAME = "jemalloc"
ALLOCATOR = JemallocAllocator


def is_present(session) -> bool:
    """An object defines <prefix>mallctlnametomib (jemalloc's public API), or the executable
    embeds jemalloc's strings (a static copy stripped of every symbol)."""
    from .version import find

    return find(session) is not None
