"""Struct layouts as DWARF states them, for binding descriptors to what the target really has.

Reading a whole libc's DWARF takes seconds, so lookups name the compilation units worth trying
first (`cu_hint`, e.g. 'malloc.c') and stop at the first complete definition. Results are kept
per (file, struct) in the process.
"""

from __future__ import annotations

import os

from mdbpy.layout.bind import DwarfStruct

_cache: dict[tuple, DwarfStruct | None] = {}


def _attr(die, name):
    a = die.attributes.get(name)
    return None if a is None else a.value


def member_offset(die) -> int | None:
    a = die.attributes.get("DW_AT_data_member_location")
    if a is None:
        return 0  # union members and some first members carry no location
    if isinstance(a.value, int):
        return a.value
    # an old-style location expression: DW_OP_plus_uconst N
    v = a.value
    if isinstance(v, list) and len(v) >= 2 and v[0] == 0x23:
        n, shift = 0, 0
        for b in v[1:]:
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return n
    return None


def _type_size(die, depth: int = 0) -> int | None:
    """The byte size of a member's type, following typedefs, qualifiers and arrays."""
    t = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
    while t is not None and depth < 16:
        size = _attr(t, "DW_AT_byte_size")
        if size is not None and t.tag != "DW_TAG_array_type":
            return size
        if t.tag == "DW_TAG_array_type":
            elem = _type_size(t, depth + 1)
            count = 1
            for sub in t.iter_children():
                if sub.tag == "DW_TAG_subrange_type":
                    if "DW_AT_count" in sub.attributes:
                        count *= _attr(sub, "DW_AT_count")
                    elif "DW_AT_upper_bound" in sub.attributes:
                        count *= _attr(sub, "DW_AT_upper_bound") + 1
                    else:
                        return None  # flexible
            return None if elem is None else elem * count
        if t.tag == "DW_TAG_pointer_type":
            return t.cu.header["address_size"]
        if "DW_AT_type" not in t.attributes:
            return None
        t = t.get_DIE_from_attribute("DW_AT_type")
        depth += 1
    return None


def find_struct(path: str, name: str, cu_hint: str | None = None) -> DwarfStruct | None:
    """The layout of `struct name` in the DWARF of the ELF file at path, or None."""
    key = (os.path.realpath(path), name, cu_hint)
    if key in _cache:
        return _cache[key]
    result = None
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.has_dwarf_info():
                dwarf = elf.get_dwarf_info()
                result = _search(dwarf, name, cu_hint, os.path.basename(path))
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError):
        # pyelftools raises assorted errors on damaged or unusual DWARF; no layout then.
        result = None
    _cache[key] = result
    return result


def find_structs(path: str, names, cu_hint: str | None = None) -> dict[str, DwarfStruct]:
    """The layouts of several structs from one pass over the DWARF (an allocator binds a
    dozen structs; find_struct per name would parse the file once per name). Found and
    missing names land in find_struct's cache too."""
    names = list(names)
    keys = {n: (os.path.realpath(path), n, cu_hint) for n in names}
    if all(k in _cache for k in keys.values()):
        return {n: _cache[k] for n, k in keys.items() if _cache[k] is not None}
    found: dict[str, DwarfStruct] = {}
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.has_dwarf_info():
                dwarf = elf.get_dwarf_info()
                want = {n.encode(): n for n in names}
                for die in _struct_dies(dwarf, cu_hint):
                    name = want.pop(_attr(die, "DW_AT_name"), None)
                    if name is not None:
                        found[name] = _struct_of(die, os.path.basename(path))
                        if not want:
                            break
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError):
        found = {}
    for n, k in keys.items():
        _cache[k] = found.get(n)
    return found


def _struct_dies(dwarf, cu_hint: str | None):
    """Every complete struct/union definition, hinted compilation units first."""
    cus = list(dwarf.iter_CUs())
    if cu_hint:
        def hinted(cu):
            cu_name = _attr(cu.get_top_DIE(), "DW_AT_name")
            return cu_name is not None and cu_hint.encode() in cu_name
        cus.sort(key=lambda cu: not hinted(cu))
    for cu in cus:
        for die in cu.iter_DIEs():
            if die.tag in ("DW_TAG_structure_type", "DW_TAG_union_type") and \
                    not _attr(die, "DW_AT_declaration"):
                yield die


def _struct_of(die, origin: str) -> DwarfStruct:
    members = {}
    for m in die.iter_children():
        if m.tag != "DW_TAG_member":
            continue
        mname = _attr(m, "DW_AT_name")
        if mname is None:
            continue
        members[mname.decode()] = (member_offset(m), _type_size(m))
    return DwarfStruct(_attr(die, "DW_AT_byte_size") or 0, members, origin)


def _search(dwarf, name: str, cu_hint: str | None, origin: str) -> DwarfStruct | None:
    want = name.encode()
    for die in _struct_dies(dwarf, cu_hint):
        if _attr(die, "DW_AT_name") == want:
            return _struct_of(die, origin)
    return None


def find_variable(path: str, name: str, cu_hint: str | None = None):
    """Where DWARF puts the global or static variable `name` of the ELF file at path: its file
    address (a DW_OP_addr location), 0 when DWARF describes it without a location (the
    compiler dropped it: a static that is only written), or None when DWARF does not name it.
    For variables a stripped symbol table lacks, or that never had a symbol."""
    want = name.encode()
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return None
            cus = list(elf.get_dwarf_info().iter_CUs())
            if cu_hint:
                cus.sort(key=lambda cu: cu_hint.encode() not in (
                    _attr(cu.get_top_DIE(), "DW_AT_name") or b""))
            for cu in cus:
                for die in cu.get_top_DIE().iter_children():
                    if die.tag != "DW_TAG_variable" or _attr(die, "DW_AT_name") != want:
                        continue
                    loc = _attr(die, "DW_AT_location")
                    if isinstance(loc, list) and len(loc) == 9 and loc[0] == 0x03:  # DW_OP_addr
                        return int.from_bytes(bytes(loc[1:]), "little")
                    if loc is None and not _attr(die, "DW_AT_declaration"):
                        return 0
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError):
        return None
    return None


def has_debug_info(path: str) -> bool:
    """True when the ELF file at path has a .debug_info with contents (a stripped file keeps
    the section header with SHT_NOBITS), checked without parsing any DWARF."""
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            sec = ELFFile(f).get_section_by_name(".debug_info")
            return sec is not None and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"] > 0
    except (OSError, ELFError, ValueError, AttributeError, AssertionError, TypeError):
        return False
