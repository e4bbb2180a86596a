"""An object's type index: names of types and globals -> DIE offsets, kept on disk by build-id.

Building it reads the whole .debug_info (scan.py: about 0.5 s for libc's debug file); reading it
back is one small JSON file, so a second mdbpy finds `struct malloc_state` without touching the
DWARF beyond that one type. The entry lives beside the symbol cache (`$MDBPY_CACHE_DIR`, see
mdbpy/symbols/cache.py) as `<build-id>.types`:

    {"version": 4, "build_id": "...", "dwarf_size": N, "sup": S,
     "index": {cus, types, vars, tls, sigs, ...}}

A second entry, `<build-id>.sizes`, lists the file's complete named structs and unions (and
typedefs naming anonymous ones) by size, for the typegraph's containers (mdbpy/types/graph/
containers.py). It is made only when a typegraph first needs it, from the DIEs the index
names (dies.py's DwarfTypes.sized), and checked as the index is; its version is
[FORMAT_VERSION, SIZES_VERSION], so an index format change makes it stale too.

It is JSON, never pickle, so a planted file can at worst be rejected; an entry whose version,
build-id or DWARF file size does not match is ignored and the index is built again. A debug
file that refers to a supplementary file (dwz) is indexed with that file's partial units, so
the entry also says which supplementary file it was built with (S: its build-id and size, or
{"missing": name} when it was not found, null when there is none): a common file installed,
removed or replaced since makes the entry stale.
"""

from __future__ import annotations

import bisect
import os

from mdbpy.symbols import cache
from mdbpy.types.scan import ScanError, Sections, scan, unit_of

# 2: thread-local variables (tls_keys, tls_dies); 3: type unit signatures, supplementary files;
# 4: function-scope statics and __thread variables among the addressed ones
FORMAT_VERSION = 4
SUFFIX = ".types"
SIZES_SUFFIX = ".sizes"
# 2: each row says whether the struct ends with a flexible array; unreadable DIEs kept. The
# entry's version is [FORMAT_VERSION, SIZES_VERSION]: a listing made from an index of another
# format is stale too
SIZES_VERSION = 2
MAX_ENTRY = 64 << 20
SECTIONS = {"info": ".debug_info", "abbrev": ".debug_abbrev", "str": ".debug_str",
            "line_str": ".debug_line_str", "str_offsets": ".debug_str_offsets",
            "types": ".debug_types"}


class TypeIndex:
    """Where one DWARF file defines each named type and global variable."""

    def __init__(self, data: dict):
        self.cus: list[int] = data["cus"]
        self.types: dict[str, dict[str, int]] = data["types"]
        self.vars: dict[str, int] = data["vars"]
        self.var_decls: dict[str, int] = data.get("var_decls", {})
        self.addr_keys: list[int] = data["addr_keys"]
        self.addr_dies: list[int] = data["addr_dies"]
        self.tls_keys: list[int] = data["tls_keys"]
        self.tls_dies: list[int] = data["tls_dies"]
        self.sigs: dict[str, int] = data.get("sigs", {})
        self.cpp_units: set[int] = set(data.get("cpp_units", ()))

    def type_die(self, kind: str, name: str) -> int | None:
        """The DIE defining the type `name` of kind struct, union, enum, typedef or base."""
        return self.types.get(kind, {}).get(name)

    def var_die(self, name: str) -> int | None:
        """The DIE defining the global `name` (its extern declaration when only that)."""
        off = self.vars.get(name)
        return off if off is not None else self.var_decls.get(name)

    def var_at(self, file_addr: int) -> int | None:
        """The DIE of the variable DW_OP_addr places at file_addr exactly."""
        i = bisect.bisect_left(self.addr_keys, file_addr)
        if i < len(self.addr_keys) and self.addr_keys[i] == file_addr:
            return self.addr_dies[i]
        return None

    def tls_at(self, offset: int) -> int | None:
        """The DIE of the thread-local variable at `offset` in the TLS block exactly."""
        i = bisect.bisect_left(self.tls_keys, offset)
        if i < len(self.tls_keys) and self.tls_keys[i] == offset:
            return self.tls_dies[i]
        return None

    def sig_die(self, sig: int) -> int | None:
        """The DIE of the type whose type unit has signature sig (DW_FORM_ref_sig8)."""
        return self.sigs.get(f"{sig:016x}")

    def unit_of(self, die_off: int) -> int:
        return unit_of(self.cus, die_off)

    def names(self, kind: str) -> list[str]:
        return sorted(self.types.get(kind, {}))


def read_sections(elf) -> Sections:
    """The bytes the scan needs, decompressed, from a pyelftools ELFFile."""
    data = {}
    for key, name in SECTIONS.items():
        sec = elf.get_section_by_name(name)
        data[key] = sec.data() if sec is not None and sec["sh_type"] != "SHT_NOBITS" else b""
    return Sections(**data)


def build(elf, sup_elf=None) -> TypeIndex:
    """Scan the DWARF of an ELFFile, with its supplementary file's (raises ScanError on DWARF
    the scan cannot follow)."""
    return TypeIndex(_scanned(elf, sup_elf))


def _scanned(elf, sup_elf) -> dict:
    sup = read_sections(sup_elf) if sup_elf is not None else None
    return scan(read_sections(elf), sup).as_json()


def load_or_build(path: str, build_id: str | None, elf, sup_elf=None, sup=None) -> TypeIndex:
    """The index of the DWARF file at path: from the cache when an entry for build_id
    matches the file (and `sup`, what identifies its supplementary file, see the module
    doc), else built and stored."""
    size = os.path.getsize(path)
    hit = _load(build_id, size, sup) if build_id else None
    if hit is not None:
        return hit
    found = _scanned(elf, sup_elf)
    if build_id:
        _store(build_id, size, found, sup)
    return TypeIndex(found)


def _load(build_id: str, size: int, sup=None) -> TypeIndex | None:
    data = _entry(build_id, SUFFIX, FORMAT_VERSION, size, sup, "index", _well_formed)
    return None if data is None else TypeIndex(data)


def _entry(build_id: str, suffix: str, version: int, size: int, sup, key: str, check):
    """The `key` part of build_id's entry with that suffix when the entry is of this version,
    for this build-id, DWARF file size and supplementary file, and `check` accepts it; else
    None (absent, stale, corrupt or foreign: made again)."""
    entry = cache.load_json(build_id, suffix, MAX_ENTRY)
    if not isinstance(entry, dict):
        return None
    try:
        if (entry.get("version") != version or entry.get("build_id") != build_id
                or entry.get("dwarf_size") != size or entry.get("sup") != sup
                or not check(entry[key])):
            return None
        return entry[key]
    except Exception:
        return None


def load_or_list_sizes(path: str, build_id: str | None, sup, listing) -> list[list]:
    """[size, kind, name, flexible] of every complete named struct, union and
    anonymous-struct typedef of the DWARF file at path, by size (dies.py's DwarfTypes.sized):
    from the cache when an entry for build_id matches the file and this index format, else
    listing() (which reads each named DIE and its members: 1 to 2 s for libc's debug file,
    623 types, against 0.5 ms from the cache: docs/types.md) and stored. Kept apart from the
    index: only the typegraph's containers need it."""
    size = os.path.getsize(path)
    version = [FORMAT_VERSION, SIZES_VERSION]
    hit = _entry(build_id, SIZES_SUFFIX, version, size, sup, "sizes", _well_sized) \
        if build_id else None
    if hit is not None:
        return hit
    found = sorted(listing())
    if build_id:
        cache.store_json(build_id, SIZES_SUFFIX, {"version": version, "build_id": build_id,
                                                  "dwarf_size": size, "sup": sup,
                                                  "sizes": found})
    return found


def _well_sized(rows) -> bool:
    """[[size, kind, name, flexible], ...] sorted, with sizes >= 0 (0: unreadable), kinds
    the index knows and flexible 1, 0 or -1 (unknown)."""
    return isinstance(rows, list) and all(
        isinstance(r, list) and len(r) == 4 and type(r[0]) is int and r[0] >= 0
        and r[1] in ("struct", "union", "typedef") and isinstance(r[2], str)
        and r[3] in (1, 0, -1) and type(r[3]) is int for r in rows) and rows == sorted(rows)


def _well_formed(data) -> bool:
    """The shapes TypeIndex relies on: sorted int lists, and str -> int maps."""
    def ints(v):
        return isinstance(v, list) and all(type(x) is int for x in v)

    def names(v):
        return isinstance(v, dict) and all(type(x) is int for x in v.values())

    return (isinstance(data, dict) and ints(data.get("cus")) and data["cus"] == sorted(data["cus"])
            and ints(data.get("addr_keys")) and ints(data.get("addr_dies"))
            and len(data["addr_keys"]) == len(data["addr_dies"])
            and ints(data.get("tls_keys")) and ints(data.get("tls_dies"))
            and len(data["tls_keys"]) == len(data["tls_dies"])
            and names(data.get("vars")) and names(data.get("var_decls", {}))
            and isinstance(data.get("types"), dict)
            and all(names(v) for v in data["types"].values())
            and names(data.get("sigs", {})) and ints(data.get("cpp_units", [])))


def _store(build_id: str, size: int, found: dict, sup=None) -> None:
    cache.store_json(build_id, SUFFIX, {"version": FORMAT_VERSION, "build_id": build_id,
                                        "dwarf_size": size, "sup": sup, "index": found})


__all__ = ["TypeIndex", "ScanError", "load_or_build", "build"]
