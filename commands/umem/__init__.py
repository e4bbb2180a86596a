"""The `umem` dmod: libumem as mdb's libumem module sees it, and as an allocator for the
generic heap engines (::findleaks, ::whatis, verify, stats).

Loaded automatically when the target has libumem (a libumem.so* object, or an executable
linked with it, holding umem_null_cache). Once libumem is ready, every cache also gets a walker
named after it (`::walk umem_alloc_32`), as mdb registers them.
"""

from __future__ import annotations

from mdbpy.dcmd import Walker
from mdbpy.errors import MdbError

from mdbpy_commands.umem.allocator import UmemAllocator
from mdbpy_commands.umem.layouts import UMEM_READY
from mdbpy_commands.umem.state import Umem, find_object
from mdbpy_commands.umem.walkers import buffers, register_ptc_walkers

DMOD_NAME = "umem"
ALLOCATOR = UmemAllocator
MACRO_ALIASES = {"bufctl_audit": "::bufctl -v"}  # mdb's built-in alias of the old adb macro


def is_present(session) -> bool:
    """libumem is present: some object named libumem.so*, or the executable, defines
    umem_null_cache."""
    return find_object(session) is not None


def on_load(session) -> None:
    """Register one walker per cache, named after it, and the per-thread cache walkers
    (when libumem is ready)."""
    try:
        umem = Umem.get(session)
        if umem.ready != UMEM_READY:
            return
        caches = umem.caches()
    except MdbError as e:
        session.warn(f"umem: {e}")
        return
    reg = session.registry
    for c in caches:
        name = c.cstr("cache_name")
        if not name or name in reg.walkers:
            continue
        reg.add_walker(Walker(name, _cache_walker(c.addr), f"walk the {name} cache",
                              needs_addr=False), DMOD_NAME)
    register_ptc_walkers(session, umem, DMOD_NAME)


def _cache_walker(addr: int):
    def walk(session, _addr):
        """The allocated buffers of this cache."""
        return buffers(session, addr, "alloc")

    return walk
