"""The `sim` dmod: mdbpy's slab allocator simulator as a heap source (see mdbpy/sim/).

An allocator dmod exports `is_present(session) -> bool` (is this allocator in the target?) and
`ALLOCATOR`, its mdbpy.heap.model.Allocator subclass, which the generic engines (::findleaks,
::whatis, verify, stats) use. Session.autoload() loads the installed modules (pyproject.toml's
entry points) whose is_present() says yes.
"""

from mdbpy.errors import MdbError
from mdbpy.sim.layouts import SIM_ALLOCATOR_SYMBOL

from .heap import SimAllocator

DMOD_NAME = "sim"
ALLOCATOR = SimAllocator


def is_present(session) -> bool:
    """The simulated program exports its allocator's root as a symbol."""
    return session.symbols.lookup(SIM_ALLOCATOR_SYMBOL) is not None


def on_load(session) -> None:
    """Add one walker per cache of the target's simulated heap (none without one). The heap
    is detected here directly: session.allocators() may not be asked while autoload() is
    still loading the other allocator modules."""
    from .dcmds import register_cache_walkers

    try:
        sim = SimAllocator.detect(session) if is_present(session) else None
        if sim is not None:
            register_cache_walkers(session, sim, DMOD_NAME)
    except MdbError as e:
        session.warn(f"sim: cache walkers not added: {e}")
