"""The `sim` dmod: mdbpy's slab allocator simulator as a heap source (see mdbpy/sim/).

An allocator dmod exports `detect(session) -> bool` (is this allocator in the target?) and
`ALLOCATOR`, its mdbpy.heap.model.Allocator subclass, which the generic engines (::findleaks,
::whatis, verify, stats) use. Session.autoload() loads the bundled allocator dmods whose detect()
says yes.
"""

from mdbpy.sim.layouts import SIM_ALLOCATOR_SYMBOL

DMOD_NAME = "sim"


def detect(session) -> bool:
    """The simulated program exports its allocator's root as a symbol."""
    return session.symbols.lookup(SIM_ALLOCATOR_SYMBOL) is not None
