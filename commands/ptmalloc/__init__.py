"""The `ptmalloc` dmod: glibc's malloc (ptmalloc2), the allocator of nearly every Linux process.

Arenas, heaps, chunks, tcache and bins, mp_ and malloc_stats(3)-equal statistics, walkers that
pipe into other dcmds, leaks through the generic engine and a heap verifier; from libc's debug
symbols when present, else from self-verifying heuristics (see locate.py).
"""

from mdbpy.errors import MdbError

from .allocator import PtmallocAllocator

DMOD_NAME = "ptmalloc"
ALLOCATOR = PtmallocAllocator


def is_present(session) -> bool:
    """glibc is mapped (its release string says so): then its malloc is the heap."""
    from .version import glibc_version

    try:
        glibc_version(session)
    except MdbError:
        return False
    return True
