"""Types built from the DIEs of one DWARF file, with pyelftools, one type at a time.

A DwarfTypes is one file's DWARF: its name index (index.py) says where a name is defined, and
each DIE asked for becomes a model type once (memoized by DIE offset). Struct members, pointer
and typedef targets are built when first used, so asking for `struct _IO_FILE` reads that one
DIE and not the hundred types its pointers reach. A struct or enum DIE that is only a
declaration is completed from this file's own definition of the name when it has one; the
session completes it across objects otherwise (space.py).

Two shapes of real DWARF need more than pyelftools' defaults, both set on the DWARFInfo here:
- a supplementary file (`dwz -m`, as Debian's -dbgsym packages are built): found from the
  file's .gnu_debugaltlink (or .debug_sup) by name or build-id (mdbpy/symbols/debuginfo.py)
  and set as the DWARFInfo's supplementary_dwarfinfo, through which pyelftools reads
  DW_FORM_GNU_strp_alt strings and follows DW_FORM_GNU_ref_alt references. When it is missing,
  what refers into it is an unknown type (`<unknown>`, size 0), never a guess.
- type units (-fdebug-types-section): DW_FORM_ref_sig8 is resolved through the index's
  signatures, for DWARF 4's .debug_types and DWARF 5's DW_UT_type units alike (pyelftools
  alone knows only the former).
A DIE is named by its index offset (scan.py: SUP and TYPES mark the other sections), which is
what memoizes its type.
"""

from __future__ import annotations

import functools
import os

from elftools.common.exceptions import DWARFError, ELFError
from elftools.construct import ConstructError

from mdbpy.errors import MdbError
from mdbpy.layout.dwarf import member_offset
from mdbpy.types import index as type_index
from mdbpy.types.model import (ATE_SIGNED, ATE_SIGNED_CHAR, Array, Base, Enum, Function, Member,
                               Pointer, Qualified, Static, Struct, Type, Typedef, Void)
from mdbpy.types.scan import CPP_LANGS, SUP, TYPES, tls_offset

QUALIFIERS = {"DW_TAG_const_type": "const", "DW_TAG_volatile_type": "volatile",
              "DW_TAG_restrict_type": "restrict", "DW_TAG_atomic_type": "_Atomic"}
POINTERS = {"DW_TAG_pointer_type": "", "DW_TAG_reference_type": "&",
            "DW_TAG_rvalue_reference_type": "&&", "DW_TAG_ptr_to_member_type": ""}
STRUCTS = {"DW_TAG_structure_type": "struct", "DW_TAG_class_type": "class",
           "DW_TAG_union_type": "union"}
INDEX_KIND = {"struct": "struct", "class": "struct", "union": "union"}
DATA_FORMS = {"DW_FORM_data1": 1, "DW_FORM_data2": 2, "DW_FORM_data4": 4, "DW_FORM_data8": 8}
ALT_REFS = ("DW_FORM_GNU_ref_alt", "DW_FORM_ref_sup4", "DW_FORM_ref_sup8")
UNIT_TAGS = ("DW_TAG_compile_unit", "DW_TAG_partial_unit", "DW_TAG_type_unit")
UNKNOWN = "<unknown>"  # the name of a type in a supplementary file that is missing


def _dwarf_errors(method):
    """pyelftools raises assorted errors on damaged or unusual DWARF; they become one-line
    MdbErrors naming the file, so a bad DIE fails one command, not the session."""
    @functools.wraps(method)
    def wrapped(self, *args):
        try:
            return method(self, *args)
        except MdbError:
            raise
        except (DWARFError, ELFError, ConstructError, ValueError, KeyError, IndexError,
                AssertionError, AttributeError, TypeError, NotImplementedError, OverflowError) as e:
            raise MdbError(f"{self.path}: unreadable DWARF ({type(e).__name__}: {e})") from None
    return wrapped


def _attr(die, name: str):
    a = die.attributes.get(name)
    return None if a is None else a.value


def _text(die, name: str = "DW_AT_name") -> str | None:
    v = _attr(die, name)
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else None


class DwarfTypes:
    """The types and globals of one file's DWARF (an executable built with -g, or a separate
    debug file). Holds the file open for the life of the process."""

    def __init__(self, path: str, build_id: str | None, debug_dirs=()):
        from elftools.elf.elffile import ELFFile

        self.path = path
        self._file = open(path, "rb")
        self.elf = ELFFile(self._file)
        # the supplementary file: its link (name, build-id), its path and ELFFile when found
        self.sup_link = _sup_link(self.elf)
        self.sup_path = None
        self.sup_elf = None
        sup = None
        if self.sup_link is not None:
            self.sup_path = _find_sup(path, *self.sup_link, debug_dirs)
            if self.sup_path is not None:
                self._sup_file = open(self.sup_path, "rb")
                self.sup_elf = ELFFile(self._sup_file)
                sup = {"build_id": self.sup_link[1],
                       "size": os.path.getsize(self.sup_path)}
            else:
                sup = {"missing": self.sup_link[0]}
        self.index = type_index.load_or_build(path, build_id, self.elf, self.sup_elf, sup)
        self._identity = (build_id, sup)  # what the cache entries are checked against
        self._sized: list[list] | None = None
        self._dwarf = None
        self._tus: dict[int, object] | None = None  # .debug_types units by offset
        self._types: dict[int, Type] = {}
        self._langs: dict[int, bool] = {}  # unit (index offset) -> C++

    @property
    def missing_sup(self) -> str | None:
        """The warning for a supplementary file the debug file names but that is not found."""
        if self.sup_link is None or self.sup_path is not None:
            return None
        name, bid = self.sup_link
        return (f"{self.path}: its supplementary DWARF file {name}"
                f"{f' (build-id {bid})' if bid else ''} is not found: the types and names "
                f"kept there are unknown")

    @property
    def dwarf(self):
        if self._dwarf is None:
            d = self.elf.get_dwarf_info(relocate_dwarf_sections=False, follow_links=False)
            if self.sup_elf is not None:
                d.supplementary_dwarfinfo = self.sup_elf.get_dwarf_info(
                    relocate_dwarf_sections=False, follow_links=False)
            d.get_DIE_by_sig8 = self._die_by_sig8  # pyelftools reads .debug_types' only
            self._dwarf = d
        return self._dwarf

    @_dwarf_errors
    def die(self, off: int):
        """The DIE at an index offset (see scan.py: SUP and TYPES mark other sections)."""
        unit = self.index.unit_of(off)
        if off >= TYPES:
            return self._tu(unit - TYPES).get_DIE_from_refaddr(off - TYPES)
        if off >= SUP:
            sup = self.dwarf.supplementary_dwarfinfo
            if sup is None:
                raise MdbError(f"{self.path}: a DIE of its missing supplementary file")
            return sup.get_CU_at(unit - SUP).get_DIE_from_refaddr(off - SUP)
        return self.dwarf.get_CU_at(unit).get_DIE_from_refaddr(off)

    def key(self, die) -> int:
        """A DIE's index offset: its offset in its section, marked with the section."""
        cu = die.cu
        if cu.dwarfinfo is not self.dwarf:
            return SUP + die.offset
        return TYPES + die.offset if hasattr(cu, "tu_offset") else die.offset

    def _tu(self, offset: int):
        if self._tus is None:
            self._tus = {tu.tu_offset: tu for tu in self.dwarf.iter_TUs()}
        return self._tus[offset]

    def _die_by_sig8(self, sig: int):
        off = self.index.sig_die(sig)
        if off is None:
            raise KeyError(f"no type unit with signature {sig:016x}")
        return self.die(off)

    def ref(self, die, name: str):
        """The DIE an attribute of die refers to, or None where it cannot be found: in a
        supplementary file that is missing, or a type unit that is not there."""
        a = die.attributes[name]
        if a.form in ALT_REFS and die.dwarfinfo.supplementary_dwarfinfo is None:
            return None
        try:
            return die.get_DIE_from_attribute(name)
        except KeyError:  # a signature no type unit has
            return None

    def type_ref(self, die, name: str = "DW_AT_type") -> Type:
        """The type an attribute refers to: void when absent, unknown when unresolvable."""
        if name not in die.attributes:
            return Void()
        target = self.ref(die, name)
        return unknown() if target is None else self.type_of(target)

    def sized(self) -> list[list]:
        """[size, kind, name, flexible] of every complete named struct and union, and every
        typedef naming an anonymous one, sorted by size: the typegraph's candidate containers
        (made on first use and cached beside the index, mdbpy/types/index.py). flexible is 1
        for a struct ending with a flexible array, 0 for one that does not, -1 where its
        members cannot be read; a type whose size cannot be read is listed with size 0 (it
        could be any buffer's: containers.py then types no buffer by size)."""
        if self._sized is None:
            self._sized = type_index.load_or_list_sizes(self.path, *self._identity,
                                                         self._list_sizes)
        return self._sized

    def _list_sizes(self) -> list[list]:
        """sized() read from the DIEs the index names. A DIE whose DWARF is unreadable is
        kept, unknown (size 0, or flexible -1): left out, it could make another type the only
        candidate for a buffer that is one of it, and the listing is cached."""
        out = []
        for kind in ("struct", "union", "typedef"):
            for name, off in self.index.types.get(kind, {}).items():
                try:
                    size = self._defined_size(kind, off)
                except MdbError:
                    out.append([0, kind, name, -1])
                    continue
                if size:
                    try:
                        flexible = int(self._flexible(off))
                    except MdbError:
                        flexible = -1
                    out.append([size, kind, name, flexible])
        return out

    @_dwarf_errors
    def _flexible(self, off: int) -> bool:
        """Whether the struct defined at off (a typedef's: the one it names) ends with a
        flexible array (Struct.trailing_array)."""
        t = self.type_at(off).strip()
        return isinstance(t, Struct) and t.trailing_array() is not None

    @_dwarf_errors
    def _defined_size(self, kind: str, off: int) -> int | None:
        """The byte size of the struct or union defined at off (a typedef's: of the anonymous
        one it names), None for a declaration or a typedef of anything else."""
        die = self.die(off)
        if kind == "typedef":
            die = self.ref(die, "DW_AT_type") if "DW_AT_type" in die.attributes else None
            if die is None or die.tag not in STRUCTS or _text(die) is not None:
                return None
        return None if _attr(die, "DW_AT_declaration") else _attr(die, "DW_AT_byte_size")

    # -- lookups by name ----------------------------------------------------------------------
    def type_named(self, kind: str, name: str) -> Type | None:
        """kind: struct, union, enum, typedef or base (the index's kinds)."""
        off = self.index.type_die(kind, name)
        return None if off is None else self.type_at(off)

    @_dwarf_errors
    def var_named(self, name: str) -> tuple[Type, int | None] | None:
        """(type, file address or None) of the global `name`."""
        off = self.index.var_die(name)
        if off is None:
            return None
        die = self.die(off)
        return self.var_type(die), _static_address(die)

    @_dwarf_errors
    def thread_local(self, name: str) -> tuple[Type, int] | None:
        """(type, offset in the object's TLS block) of the `__thread` variable `name`."""
        off = self.index.var_die(name)
        if off is None:
            return None
        die = self.die(off)
        loc = _attr(die, "DW_AT_location")
        at = tls_offset(bytes(loc)) if isinstance(loc, list) else None
        return None if at is None else (self.var_type(die), at)

    @_dwarf_errors
    def thread_local_at(self, offset: int) -> tuple[Type, str] | None:
        """(type, name) of the `__thread` variable at `offset` in the object's TLS block."""
        off = self.index.tls_at(offset) if offset >= 0 else None
        if off is None:
            return None
        die = self.die(off)
        return self.var_type(die), _text(die) or "?"

    @_dwarf_errors
    def var_at(self, file_addr: int) -> Type | None:
        off = self.index.var_at(file_addr)
        return None if off is None else self.var_type(self.die(off))

    def var_type(self, die) -> Type:
        """A variable's type, through DW_AT_specification / DW_AT_abstract_origin."""
        for _ in range(4):
            if "DW_AT_type" in die.attributes:
                return self.type_ref(die)
            ref = next((a for a in ("DW_AT_specification", "DW_AT_abstract_origin")
                        if a in die.attributes), None)
            if ref is None:
                break
            die = self.ref(die, ref)
            if die is None:
                return unknown()
        return Void()

    # -- DIE -> type ----------------------------------------------------------------------------
    def type_at(self, off: int) -> Type:
        t = self._types.get(off)
        return t if t is not None else self.type_of(self.die(off))

    @_dwarf_errors
    def type_of(self, die) -> Type:
        key = self.key(die)
        t = self._types.get(key)
        if t is None:
            t = self._build(die)
            self._types[key] = t
        return t

    def _target(self, die):
        """A loader of the type DW_AT_type names (void when absent)."""
        if "DW_AT_type" not in die.attributes:
            return Void()
        return lambda: self.type_ref(die)

    def _build(self, die) -> Type:
        if "DW_AT_signature" in die.attributes:  # the type is the one in a type unit
            return self.type_ref(die, "DW_AT_signature")
        tag = die.tag
        if tag == "DW_TAG_base_type":
            return Base(_text(die) or "?", _attr(die, "DW_AT_byte_size") or 0,
                        _attr(die, "DW_AT_encoding") or 0)
        if tag in POINTERS:
            size = _attr(die, "DW_AT_byte_size") or die.cu.header["address_size"]
            return Pointer(self._target(die), size, POINTERS[tag])
        if tag in QUALIFIERS:
            return Qualified(self._target(die), (QUALIFIERS[tag],))
        if tag == "DW_TAG_typedef":
            return Typedef(self._name(die) or "?", self._target(die))
        if tag in STRUCTS:
            return self._struct(die, STRUCTS[tag])
        if tag == "DW_TAG_enumeration_type":
            return self._enum(die)
        if tag == "DW_TAG_array_type":
            return self._array(die)
        if tag == "DW_TAG_subroutine_type":
            return self._function(die)
        if tag == "DW_TAG_unspecified_type":
            return Void(_text(die) or "void")
        return Void(f"<{tag.removeprefix('DW_TAG_')}>")

    def _name(self, die) -> str | None:
        """DW_AT_name, qualified by its namespaces and classes in a C++ unit
        (`shapes::inner::Point`, as gdb and the index name it)."""
        name = _text(die)
        if name is None or not self._cpp(die.cu):
            return name
        return "::".join(_scopes(die))

    def _cpp(self, cu) -> bool:
        top = cu.get_top_DIE()
        unit = self.key(top) - (top.offset - cu.cu_offset)
        lang = self._langs.get(unit)
        if lang is None:
            code = _attr(top, "DW_AT_language")
            # a partial unit (dwz) has none: it is in its importer's language
            lang = self._langs[unit] = code in CPP_LANGS if code is not None else \
                unit in self.index.cpp_units
        return lang

    def _struct(self, die, tag: str) -> Type:
        name = self._name(die)
        if _attr(die, "DW_AT_declaration"):
            off = self.index.type_die(INDEX_KIND[tag], name) if name else None
            if off is not None and off != self.key(die):
                return self.type_at(off)
            return Struct(tag, name, None, [], complete=False, cxx=self._cpp(die.cu))
        t = Struct(tag, name, _attr(die, "DW_AT_byte_size"), cxx=self._cpp(die.cu))
        t.__dict__["members"] = lambda: self._members(die)
        t.__dict__["statics"] = lambda: self._statics(die)
        return t

    @_dwarf_errors
    def _members(self, die) -> list[Member]:
        out = []
        for m in die.iter_children():
            if m.tag == "DW_TAG_inheritance":
                base = self.type_ref(m)
                out.append(Member(f"<{base.name or base.spelled()}>", base, member_offset(m),
                                  base=True))
            elif m.tag == "DW_TAG_member" and not _attr(m, "DW_AT_declaration") \
                    and not _attr(m, "DW_AT_external"):
                out.append(self._member(m))
        return out

    def _member(self, m) -> Member:
        offset = member_offset(m)  # 0 without a location (union members); None: computed
        bit_size = _attr(m, "DW_AT_bit_size")
        bit_offset = None
        if bit_size is not None:
            if "DW_AT_data_bit_offset" in m.attributes:
                bit_offset = _attr(m, "DW_AT_data_bit_offset")
            elif "DW_AT_bit_offset" in m.attributes:  # DWARF 2/3: counted from the top bit
                unit = _attr(m, "DW_AT_byte_size")
                if unit is None:
                    unit = self.type_ref(m).size or 0
                bit_offset = 8 * ((offset or 0) + unit) - _attr(m, "DW_AT_bit_offset") - bit_size
            else:
                bit_offset = 8 * (offset or 0)
            offset = bit_offset // 8
        return Member(_text(m), self._target(m), offset, bit_size, bit_offset)

    @_dwarf_errors
    def _statics(self, die) -> list[Static]:
        """Static members, each knowing the qualified name (`ns::Class::member`) its
        definition has in the index."""
        out = []
        scope = self._name(die) or "{...}"
        for m in die.iter_children():
            static = (m.tag == "DW_TAG_variable") or (
                m.tag == "DW_TAG_member" and (_attr(m, "DW_AT_declaration")
                                              or _attr(m, "DW_AT_external")))
            name = _text(m)
            if static and name:
                out.append(Static(name, self._target(m), f"{scope}::{name}"))
        return out

    def _enum(self, die) -> Type:
        name = self._name(die)
        if _attr(die, "DW_AT_declaration"):
            off = self.index.type_die("enum", name) if name else None
            if off is not None and off != self.key(die):
                return self.type_at(off)
            return Enum(name, 4, [], complete=False)
        size = _attr(die, "DW_AT_byte_size") or 4
        signed = False
        if "DW_AT_type" in die.attributes:
            under = self.type_ref(die).strip()
            signed = isinstance(under, Base) and under.encoding in (ATE_SIGNED, ATE_SIGNED_CHAR)
        values = []
        for e in die.iter_children():
            if e.tag != "DW_TAG_enumerator":
                continue
            a = e.attributes.get("DW_AT_const_value")
            v = a.value if a is not None else 0
            width = DATA_FORMS.get(a.form) if a is not None else None
            if width and v >> (8 * width - 1) and (signed or width > size):
                v -= 1 << (8 * width)  # a data form holds the bits, not the sign
            if v < 0:
                signed = True
            values.append((_text(e) or "?", v))
        return Enum(name, size, values, signed)

    def _array(self, die) -> Type:
        counts = []
        for sub in die.iter_children():
            if sub.tag != "DW_TAG_subrange_type":
                continue
            count = _attr(sub, "DW_AT_count")
            if not isinstance(count, int):
                ub = _attr(sub, "DW_AT_upper_bound")
                lb = _attr(sub, "DW_AT_lower_bound") or 0
                count = ub - lb + 1 if isinstance(ub, int) and isinstance(lb, int) else None
            counts.append(count)
        t = self.type_ref(die)
        for count in reversed(counts or [None]):  # int a[2][3]: array of 2 arrays of 3
            t = Array(t, count)
        return t

    def _function(self, die) -> Type:
        ret = self.type_ref(die)
        params, varargs = [], False
        for p in die.iter_children():
            if p.tag == "DW_TAG_formal_parameter":
                params.append(self.type_ref(p))
            elif p.tag == "DW_TAG_unspecified_parameters":
                varargs = True
        return Function(ret, params, varargs, bool(_attr(die, "DW_AT_prototyped")))


def _scopes(die) -> list[str]:
    """The names of a DIE and its enclosing namespaces and classes, outermost first."""
    names = []
    while die is not None and die.tag not in UNIT_TAGS:
        if "DW_AT_specification" in die.attributes:  # defined outside its scope (C++)
            try:
                die = die.get_DIE_from_attribute("DW_AT_specification")
            except (NotImplementedError, KeyError):  # in a supplementary file that is missing
                pass
        names.append(_text(die) or ("(anonymous namespace)" if die.tag == "DW_TAG_namespace"
                                    else "{...}"))
        die = die.get_parent()
    return names[::-1]


def unknown() -> Type:
    """The type of what refers into a supplementary file that is missing: no size, and
    named so that what prints it says it is unknown."""
    return Void(UNKNOWN)


def is_unknown(t: Type) -> bool:
    """Whether a type is, or is made of, one that could not be resolved (unknown())."""
    for _ in range(16):
        t = t.strip()
        if isinstance(t, Array):
            t = t.element
            continue
        return isinstance(t, Void) and t.name == UNKNOWN
    return False


def _sup_link(elf) -> tuple[str, str] | None:
    """(name, build-id) of the supplementary file an ELFFile's DWARF refers to, or None."""
    from mdbpy.symbols.debuginfo import parse_altlink, parse_debug_sup

    for name, parse in ((".gnu_debugaltlink", parse_altlink), (".debug_sup", parse_debug_sup)):
        sec = elf.get_section_by_name(name)
        if sec is not None and sec["sh_type"] != "SHT_NOBITS":
            link = parse(sec.data())
            if link is not None:
                return link
    return None


def _find_sup(path: str, name: str, build_id: str, debug_dirs) -> str | None:
    from mdbpy.symbols import debuginfo

    dirs = list(debug_dirs) or debuginfo.debug_dirs(None, None)
    return debuginfo.find_supplementary(path, name, build_id, dirs)


def _static_address(die) -> int | None:
    """The file address a variable's DW_AT_location gives as DW_OP_addr, else None."""
    loc = _attr(die, "DW_AT_location")
    if isinstance(loc, list) and len(loc) == 9 and loc[0] == 0x03:
        return int.from_bytes(bytes(loc[1:]), "little")
    return None
