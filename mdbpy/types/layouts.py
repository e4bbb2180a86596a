"""Allocator struct layouts from an object's DWARF, through the types index, cached by build-id.

An allocator module binds its descriptors (mdbpy/layout) to the target's own offsets where the
object holding the allocator has DWARF. Reading them through the types layer's index (kept on
disk by build-id) costs milliseconds after the first session, where walking pyelftools' DIEs
for a struct in libc's debug file costs seconds. Even so, opening the DWARF (importing
pyelftools, reading the section headers and the abbreviations) costs every session a fifth of
a second that a glibc heap command would otherwise not spend at all; so the few structs an
allocator asks for are kept too, in `<build-id>.layouts` beside the symbol cache: JSON, with the
file they were read from and its size and modification time, so that a debug file installed,
removed or replaced since is noticed and the DWARF read again; and the same of the
supplementary file (dwz) that file refers to, whose partial units hold most of its structs.
"""

from __future__ import annotations

import os

from mdbpy.errors import MdbError
from mdbpy.layout.bind import DwarfStruct
from mdbpy.symbols import cache

SUFFIX = ".layouts"
FORMAT_VERSION = 2  # 2: the supplementary file
MAX_ENTRY = 1 << 20  # a layouts entry larger than this is not ours


def dwarf_layouts(session, obj: str, names) -> dict[str, DwarfStruct]:
    """{name: layout} of each `struct name` the DWARF of the object named obj defines ({}
    when it has no DWARF); bitfields and unnamed members are left out (a descriptor names
    neither)."""
    return bound_layouts(session, obj, names)[0]


def bound_layouts(session, obj: str, names) -> tuple[dict[str, DwarfStruct], str | None]:
    """dwarf_layouts(), and the file the DWARF is in (None without DWARF), for a dmod that
    says where its layouts came from."""
    o = session.symbols.object_named(obj)
    if o is None:
        return {}, None
    build_id = getattr(getattr(o, "info", None), "build_id", None)
    names = list(names)
    entry = _load(build_id) if build_id else None
    if entry is not None and not _is_dwarf_of(o, entry["path"]):
        entry = None  # another file of the same build (a -g twin of a stripped one)
    if entry is not None and all(n in entry["structs"] for n in names):
        return _structs(entry, names, obj), entry["path"]
    read = _read(session, obj, names)
    if read is None:
        return {}, None
    path, found, sup = read
    if build_id:
        if entry is not None and entry["path"] == path:
            found = {**entry["structs"], **found}
        _store(build_id, path, found, sup)
    return _structs({"structs": found}, names, obj), path


def _is_dwarf_of(o, path: str) -> bool:
    """Whether the file an entry was read from is where o's DWARF is looked for: o's own file
    or its debug file. A build-id names a build, not a file: a stripped copy shares its -g
    twin's, and must not be said to have the twin's DWARF."""
    if path == getattr(o, "file", None):
        return True
    find = getattr(o, "find_debug_file", None)
    return find is not None and find() == path


def _structs(entry: dict, names, obj: str) -> dict[str, DwarfStruct]:
    return {n: DwarfStruct(entry["structs"][n][0],
                           {m: tuple(v) for m, v in entry["structs"][n][1].items()},
                           f"{obj} debug info")
            for n in names if entry["structs"].get(n) is not None}


def _read(session, obj: str, names):
    """(the DWARF file, {name: [size, {member: [offset, size]}] or None}, its supplementary
    file or None) read through the types index, or None when obj has no DWARF."""
    from mdbpy.types.model import Struct
    from mdbpy.types.space import space_of

    space = space_of(session)
    try:
        found = [d for _o, d in space.objects(obj)]
    except MdbError:
        return None
    if not found:
        return None
    out = {}
    for name in names:
        try:
            t = space.find(f"{obj}`struct {name}")
        except MdbError:
            t = None
        t = t.strip() if t is not None else None
        if not isinstance(t, Struct) or t.size is None:
            out[name] = None
            continue
        out[name] = [t.size, {m.name: [m.offset, m.type.strip().size] for m in t.members
                              if m.name and m.offset is not None and not m.is_bitfield}]
    return found[0].path, out, found[0].sup_path


def _stamp(path: str):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _load(build_id: str) -> dict | None:
    """The cached entry while the file it was read from is still there, its size and time
    unchanged (a debug file removed since means no DWARF now, as a fresh read would say).
    The build-id fixes the layouts themselves: the same build has the same structs, whether
    its DWARF came from a debug file or, stripped or not, from the object."""
    entry = cache.load_json(build_id, SUFFIX, MAX_ENTRY)
    if not isinstance(entry, dict):
        return None
    try:
        if (entry.get("version") != FORMAT_VERSION or entry.get("build_id") != build_id
                or not isinstance(entry.get("structs"), dict)
                or _stamp(entry["path"]) != entry["stamp"]):
            return None
        sup = entry.get("sup")
        if sup is not None and _stamp(sup[0]) != sup[1]:
            return None
        for v in entry["structs"].values():
            if v is not None and not (isinstance(v[0], int) and all(
                    isinstance(x, int) for pair in v[1].values() for x in pair)):
                return None
        return entry
    except Exception:  # absent, corrupt, foreign or stale: read the DWARF again
        return None


def _store(build_id: str, path: str, structs: dict, sup_path: str | None = None) -> None:
    try:
        stamp = _stamp(path)
        sup = [sup_path, _stamp(sup_path)] if sup_path else None
    except OSError:
        return
    cache.store_json(build_id, SUFFIX, {"version": FORMAT_VERSION, "build_id": build_id,
                                        "path": path, "stamp": stamp, "sup": sup,
                                        "structs": structs})
