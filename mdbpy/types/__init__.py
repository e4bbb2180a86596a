"""C and C++ types from DWARF, and the values of the target's memory seen through them.

`scan.py` makes one fast pass over an object's .debug_info for its name index, which `index.py`
keeps on disk by build-id (JSON, no pickle); `model.py` is the type model and `dies.py` builds it
from the DIEs the index names, with pyelftools, one type at a time; `space.py` resolves a type or
global name across the target's objects as mdb does; `value.py` reads a typed value (drgn's
Object, for the Python API); `path.py` walks member paths (`a.b[3]->c`); `printer.py` and
`enums.py` print values as mdb's ::print and ::enum do. The dcmds are in
commands/core/types.py; docs/types.md is the user's page.
"""
