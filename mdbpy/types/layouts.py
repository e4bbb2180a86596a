"""Allocator struct layouts from an object's DWARF, through the types index.

An allocator module binds its descriptors (mdbpy/layout) to the target's own offsets where the
object holding the allocator has DWARF. Reading them through the types layer's index (kept on
disk by build-id) costs milliseconds after the first session, where walking pyelftools' DIEs
for a struct in libc's debug file costs seconds.
"""

from __future__ import annotations

from mdbpy.errors import MdbError
from mdbpy.layout.bind import DwarfStruct


def dwarf_layouts(session, obj: str, names) -> dict[str, DwarfStruct]:
    """{name: layout} of each `struct name` the DWARF of the object named obj defines ({}
    when it has no DWARF); bitfields and unnamed members are left out (a descriptor names
    neither)."""
    from mdbpy.types.model import Struct
    from mdbpy.types.space import space_of

    space = space_of(session)
    try:
        if not any(True for _ in space.objects(obj)):
            return {}
    except MdbError:
        return {}
    out = {}
    for name in names:
        try:
            t = space.find(f"{obj}`struct {name}")
        except MdbError:
            t = None
        t = t.strip() if t is not None else None
        if not isinstance(t, Struct) or t.size is None:
            continue
        members = {m.name: (m.offset, m.type.strip().size) for m in t.members
                   if m.name and m.offset is not None and not m.is_bitfield}
        out[name] = DwarfStruct(t.size, members, f"{obj} debug info")
    return out
