"""One pass over .debug_info that finds where each named type and global variable is defined.

pyelftools turns every DIE into an object with all its attributes decoded, and parses each
compilation unit's abbreviation table through construct: on libc's debug file that takes about
7 seconds just to visit the top-level DIEs. The index needs far less (tag, name, a few flags and
offsets), so this pass reads the raw bytes itself: each abbreviation is compiled once into a list
of steps (fixed-size runs merged, only the attributes the index uses captured), and a DIE with
children is skipped through its DW_AT_sibling when it has one. What it finds is offsets; the
types themselves are built later with pyelftools (dies.py), one at a time.

Scopes entered: each unit's top level, namespaces, and in C++ units the bodies of classes (nested
types and static members get `Outer::name`). Names are the first complete definition seen
(declarations are skipped); variables with a static address (DW_OP_addr) are also indexed by
that address, so a symbol finds its variable's DIE exactly even when several files define a
static of the same name, and `__thread` ones by their offset in the TLS block. Functions are
entered too, for their statics and `__thread`s (at any depth: nested blocks, inlined functions),
indexed by address or offset only (their names are their functions'), one DIE per address; only
the functions whose bytes may hold a fixed location are read (_fixed_locations), so the scan
costs 1.1 to 1.25 times what it did without them.

Shapes beyond one plain .debug_info, each DIE offset recorded in one number space (tagged):
- type units (`-fdebug-types-section`): DWARF 5's DW_UT_type units are in .debug_info itself;
  DWARF 4's are in .debug_types, whose DIEs are recorded as TYPES + their offset there. Each
  unit's signature maps to its type's DIE (`sigs`), for DW_FORM_ref_sig8.
- a supplementary file (dwz -m: .gnu_debugaltlink; DWARF 5: .debug_sup): names may be strings
  of its .debug_str (DW_FORM_GNU_strp_alt, DW_FORM_strp_sup), and units import its partial units
  (DW_TAG_imported_unit, DW_AT_import as DW_FORM_GNU_ref_alt or DW_FORM_ref_sup4/8). Those
  partial units, and the ones they import in turn, are scanned as this file's own, their DIEs
  recorded as SUP + their offset in the supplementary file; the rest of that file (other
  programs' types) is not read. A partial unit has no DW_AT_language: it takes its importer's.
Split DWARF (DW_UT_skeleton / DW_UT_split_compile units and .dwo files) is not read.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# tags (DWARF 5, 7.5.1)
T_ARRAY, T_CLASS, T_ENUM, T_MEMBER, T_STRUCT, T_TYPEDEF, T_UNION = 0x01, 0x02, 0x04, 0x0D, 0x13, \
    0x16, 0x17
T_BASE, T_VARIABLE, T_NAMESPACE, T_UNSPECIFIED = 0x24, 0x34, 0x39, 0x3B
T_SUBPROGRAM = 0x2E
CALL_SITES = (0x48, 0x4109)  # DW_TAG_call_site, DW_TAG_GNU_call_site: no variables below
T_PARTIAL_UNIT, T_IMPORTED_UNIT = 0x3C, 0x3D
TYPE_KINDS = {T_STRUCT: "struct", T_CLASS: "struct", T_UNION: "union", T_ENUM: "enum",
              T_TYPEDEF: "typedef", T_BASE: "base", T_UNSPECIFIED: "base"}
SCOPES = (T_STRUCT, T_CLASS, T_UNION)
CPP_LANGS = {0x04, 0x1A, 0x21, 0x2B}  # DW_LANG_C_plus_plus, _03, _11, _14

# attributes captured, and the slot each lands in
A_SIBLING, A_LOCATION, A_NAME, A_LANGUAGE, A_DECLARATION, A_SPECIFICATION = 0x01, 0x02, 0x03, \
    0x13, 0x3C, 0x47
A_STR_OFFSETS_BASE, A_IMPORT, A_SIGNATURE = 0x72, 0x18, 0x69
SLOTS = {A_SIBLING: 0, A_LOCATION: 1, A_NAME: 2, A_LANGUAGE: 3, A_DECLARATION: 4,
         A_SPECIFICATION: 5, A_STR_OFFSETS_BASE: 6, A_IMPORT: 7, A_SIGNATURE: 8}
NSLOTS = 9

# forms naming the supplementary file's strings and DIEs (GNU's for dwz, then DWARF 5's)
F_REF_ADDR = 0x10
ALT_STRINGS = (0x1F21, 0x1D)  # DW_FORM_GNU_strp_alt, DW_FORM_strp_sup
ALT_REFS = (0x1F20, 0x1C, 0x24)  # DW_FORM_GNU_ref_alt, DW_FORM_ref_sup4, DW_FORM_ref_sup8
# where a recorded DIE offset points: below SUP, this file's .debug_info
SUP = 1 << 44  # + offset in the supplementary file's .debug_info
TYPES = 1 << 45  # + offset in this file's .debug_types (DWARF 4 type units)

# step operations
SKIP, LEB, CSTR, BLOCK1, BLOCK2, BLOCK4, BLOCKU, FIXED, PRESENT, INDIRECT, IMPLICIT = range(11)

DW_OP_ADDR = 0x03
# a thread-local variable's location: its offset in its object's TLS block, then the op that
# makes it an address in the current thread (DW_OP_form_tls_address, DW_OP_GNU_push_tls_address)
TLS_CONSTS = {0x0C: 4, 0x0E: 8}  # DW_OP_const4u, DW_OP_const8u
TLS_OPS = (0x9B, 0xE0)
# the bytes that start such a location as a block with a one-byte length (ONE_BYTE_LENGTHS):
# DW_OP_addr with an 8-byte address, DW_OP_const8u and DW_OP_const4u TLS offsets. A function
# whose DIEs hold none of them has no variable with a fixed location, whatever else they say.
FIXED_LOCATIONS = (b"\x09\x03", b"\x0a\x0e", b"\x06\x0c")
ONE_BYTE_LENGTHS = (0x18, 0x0A, 0x09)  # DW_FORM_exprloc, block1, block (LEB128 length < 128)
LIST_FORMS = (0x06, 0x07, 0x17, 0x22)  # data4/data8 (DWARF 2, 3), sec_offset, loclistx
# scope modes: children skipped, children named and recorded, children inside a function
# (only the variables with a fixed location are recorded)
SKIPPED, NAMED, LOCAL = 0, 1, 2
# forms whose size is in the data: LEB128 numbers and indexes, strings, blocks, flags
VARIABLE_FORMS = {0x0D: LEB, 0x0F: LEB, 0x15: LEB, 0x1A: LEB, 0x1B: LEB, 0x22: LEB, 0x23: LEB,
                  0x1F01: LEB, 0x1F02: LEB, 0x08: CSTR, 0x0A: BLOCK1, 0x03: BLOCK2,
                  0x04: BLOCK4, 0x09: BLOCKU, 0x18: BLOCKU, 0x19: PRESENT, 0x21: IMPLICIT,
                  0x16: INDIRECT}


class ScanError(ValueError):
    """The section is not DWARF this pass understands (truncated, or an unknown form)."""


@dataclass
class Sections:
    """The raw (decompressed) bytes of the sections the pass reads."""

    info: bytes
    abbrev: bytes
    str: bytes = b""
    line_str: bytes = b""
    str_offsets: bytes = b""
    types: bytes = b""  # .debug_types (DWARF 4 type units)


@dataclass
class Found:
    """What the pass found: unit offsets, and names -> DIE offsets."""

    cus: list[int] = field(default_factory=list)
    types: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: {} for k in ("struct", "union", "enum", "typedef", "base")})
    vars: dict[str, int] = field(default_factory=dict)
    var_decls: dict[str, int] = field(default_factory=dict)  # extern declarations only
    addrs: list[tuple[int, int]] = field(default_factory=list)  # (file address, DIE offset)
    tls: list[tuple[int, int]] = field(default_factory=list)  # (offset in TLS block, DIE offset)
    sigs: dict[str, int] = field(default_factory=dict)  # type unit signature (hex) -> type DIE
    cpp_units: list[int] = field(default_factory=list)  # partial units C++ by their importer

    def as_json(self) -> dict:
        self.addrs.sort()
        self.tls.sort()
        self.cus.sort()
        self.cpp_units.sort()
        return {"cus": self.cus, "types": self.types, "vars": self.vars,
                "var_decls": self.var_decls, "sigs": self.sigs, "cpp_units": self.cpp_units,
                "addr_keys": [a for a, _ in self.addrs], "addr_dies": [d for _, d in self.addrs],
                "tls_keys": [a for a, _ in self.tls], "tls_dies": [d for _, d in self.tls]}


def _form_step(form: int, offset_size: int, addr_size: int, version: int):
    """(op, size) to get past one attribute of this form."""
    fixed = {0x01: addr_size, 0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: offset_size,
             0x10: offset_size if version >= 3 else addr_size, 0x11: 1, 0x12: 2, 0x13: 4,
             0x14: 8, 0x17: offset_size, 0x1C: 4, 0x1D: offset_size, 0x1E: 16,
             0x1F: offset_size, 0x20: 8, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1,
             0x2A: 2, 0x2B: 3, 0x2C: 4, 0x1F20: offset_size, 0x1F21: offset_size}
    if form in fixed:
        return FIXED, fixed[form]
    op = VARIABLE_FORMS.get(form)
    if op is not None:
        return op, 0
    raise ScanError(f"unknown DWARF form 0x{form:x}")


def _uleb(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _sleb(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos


class _Table(dict):
    """One compiled abbreviation table, {code: (tag, children, steps)}.

    `by_bytes` says whether every variable's location in it is a one-byte-length block or a
    list, so that a fixed location shows in the raw bytes as one of FIXED_LOCATIONS (else,
    never in practice, every function of the unit is read DIE by DIE). `layouts` says what
    must lie before such a location if a variable's: per variable abbreviation with a block
    location, the (refs, back, head) of _layout. A match none fits is not a variable's (most
    are call sites' DW_AT_call_value holding DW_OP_addr): its function need not be read."""

    by_bytes = True

    def __init__(self):
        super().__init__()
        self.layouts: set[tuple] = set()


class _Abbrevs:
    """Abbreviation tables by offset, each compiled to a _Table for one unit shape (offset
    size, address size, version); steps are (op, size, slot, form)."""

    def __init__(self, data: bytes):
        self.data = data
        self.tables: dict[tuple, dict[int, tuple]] = {}

    def table(self, offset: int, offset_size: int, addr_size: int, version: int) -> dict:
        key = (offset, offset_size, addr_size, version)
        t = self.tables.get(key)
        if t is None:
            t = self.tables[key] = self._compile(offset, offset_size, addr_size, version)
        return t

    def _compile(self, pos: int, offset_size: int, addr_size: int, version: int) -> dict:
        data, out = self.data, _Table()
        form_steps: dict[int, tuple[int, int]] = {}  # each form's step, worked out once
        while True:
            code, pos = _uleb(data, pos)
            if code == 0:
                return out
            tag, pos = _uleb(data, pos)
            children = data[pos]
            pos += 1
            steps: list[tuple] = []
            before = [] if tag == T_VARIABLE else None  # a variable's (form, op, size) so far
            while True:
                name = data[pos]  # one byte, almost always: the LEB128 in full otherwise
                if name < 0x80:
                    pos += 1
                else:
                    name, pos = _uleb(data, pos)
                form = data[pos]
                if form < 0x80:
                    pos += 1
                else:
                    form, pos = _uleb(data, pos)
                if name == 0 and form == 0:
                    break
                implicit = None
                if form == 0x21:
                    implicit, pos = _sleb(data, pos)
                step = form_steps.get(form)
                if step is None:
                    step = form_steps[form] = _form_step(form, offset_size, addr_size, version)
                op, size = step
                slot = SLOTS.get(name, -1)
                if op == IMPLICIT:
                    size = implicit
                if before is not None:
                    if name != A_LOCATION:
                        before.append((form, op, size))
                    elif form in ONE_BYTE_LENGTHS:
                        out.layouts.add(_layout(code, before))
                    elif form not in LIST_FORMS:
                        out.by_bytes = False
                if slot < 0 and op in (IMPLICIT, PRESENT):
                    continue  # nothing in the DIE's bytes, nothing wanted
                if slot < 0 and op == FIXED:
                    op = SKIP
                    if steps and steps[-1][0] == SKIP:  # merge runs of fixed-size skips
                        size += steps.pop()[1]
                steps.append((op, size, slot, form))
            out[code] = (tag, children, tuple(steps))


def _layout(code: int, before: list[tuple[int, int, int]]) -> tuple:
    """What lies before a variable's location when its abbreviation (code, and the
    attributes before the location: (form, op, size)) is this: (refs, back, head). Back from
    the location run `back` bytes of fixed-size attributes, among them DW_FORM_ref4 values
    (offsets in the unit, so below its length) `refs` bytes back; before those, `head`: the
    bytes that must end there (the DIE's code when every attribute is fixed-size, a NUL
    after an inline string, b"" when nothing is known), or None: a LEB128's last byte."""
    refs, back = [], 0
    for form, op, size in reversed(before):
        if op in (IMPLICIT, PRESENT):
            continue  # nothing in the DIE's bytes
        if op != FIXED:
            head = b"\0" if op == CSTR else None if op == LEB else b""
            break
        back += size
        if form == 0x13:  # DW_FORM_ref4
            refs.append(back)
    else:
        head = bytes(_uleb_bytes(code))
    return tuple(refs), back, head


def _uleb_bytes(value: int) -> list[int]:
    out = []
    while True:
        b = value & 0x7F
        value >>= 7
        if not value:
            out.append(b)
            return out
        out.append(b | 0x80)


class _Unit:
    """What one unit's DIEs need to decode their captured attributes. `offset` is in the
    unit's section; `base` is what its DIEs' offsets get in the index (0, SUP or TYPES)."""

    __slots__ = ("offset", "end", "offset_size", "str_offsets_base", "cpp", "base", "file")

    def __init__(self, offset: int, end: int, offset_size: int, base: int, file, cpp=False):
        self.offset = offset
        self.end = end
        self.offset_size = offset_size
        self.str_offsets_base = 8 if offset_size == 4 else 16
        self.cpp = cpp  # None: a partial unit's language is its importer's, not yet known
        self.base = base
        self.file = file


class _File:
    """One file's sections as the scan reads them: its abbreviations and string tables, and
    the strings of the supplementary file it refers to (None: it has none, or it is missing)."""

    def __init__(self, sec: Sections, alt: Sections | None = None):
        self.sec = sec
        self.abbrevs = _Abbrevs(sec.abbrev)
        self.names = _Names(sec, alt)


class _Scan:
    """What crosses units: the found names, the partial units imported (by section offset of
    their unit DIE, with the importer's language), and variable definitions whose declaration
    is in a unit not yet read."""

    def __init__(self):
        self.found = Found()
        self.decl_names: dict[int, str] = {}  # a declaration's DIE (index offset) -> its name
        self.type_decls: dict[int, str] = {}  # the same of C++ types declared in a scope
        self.imports: list[tuple[int, int, bool]] = []  # (base, unit DIE offset, importer C++)
        self.pending: list[tuple] = []  # (declaration's index offset, vals, die index offset)
        # function-scope variables with a fixed location: (address or offset, unnamed, DIE)
        self.local_addrs: list[tuple[int, bool, int]] = []
        self.local_tls: list[tuple[int, bool, int]] = []


def _headers(info: bytes, types_section: bool = False):
    """Each unit's header: (unit offset, end, offset size, version, unit type, address size,
    abbreviation offset, first DIE, signature, type offset) - the last two of type units."""
    pos = 0
    while pos + 11 <= len(info):
        unit_off = pos
        length = int.from_bytes(info[pos:pos + 4], "little")
        offset_size = 4
        pos += 4
        if length == 0xFFFFFFFF:
            length = int.from_bytes(info[pos:pos + 8], "little")
            offset_size = 8
            pos += 8
        end = pos + length
        version = int.from_bytes(info[pos:pos + 2], "little")
        pos += 2
        sig = type_off = None
        unit_type = 1
        if version >= 5 and not types_section:
            unit_type = info[pos]
            addr_size = info[pos + 1]
            abbrev_off = int.from_bytes(info[pos + 2:pos + 2 + offset_size], "little")
            pos += 2 + offset_size
            if unit_type in (2, 6):  # type units: signature and type offset
                sig = int.from_bytes(info[pos:pos + 8], "little")
                type_off = int.from_bytes(info[pos + 8:pos + 8 + offset_size], "little")
                pos += 8 + offset_size
            elif unit_type in (4, 5):  # skeleton and split units: dwo id
                pos += 8
        elif version >= 2:
            abbrev_off = int.from_bytes(info[pos:pos + offset_size], "little")
            addr_size = info[pos + offset_size]
            pos += offset_size + 1
            if types_section:  # DWARF 4 .debug_types: signature and type offset
                unit_type = 2
                sig = int.from_bytes(info[pos:pos + 8], "little")
                type_off = int.from_bytes(info[pos + 8:pos + 8 + offset_size], "little")
                pos += 8 + offset_size
        else:
            raise ScanError(f"unit at 0x{unit_off:x}: DWARF version {version}")
        yield (unit_off, end, offset_size, version, unit_type, addr_size, abbrev_off, pos, sig,
               type_off)
        if end <= unit_off:
            raise ScanError(f"unit at 0x{unit_off:x}: length {length}")
        pos = end


def scan(sec: Sections, sup: Sections | None = None) -> Found:
    """Every unit of .debug_info and .debug_types, and the supplementary file's partial units
    they import (sup: its sections; None when the file has none or it is missing, and then
    what is there is left out: names in its strings, types in its units); raises ScanError on
    bytes it cannot follow."""
    st = _Scan()
    found = st.found
    main = _File(sec, sup)
    deferred = []  # partial units without a language: scanned once their importer is known
    pos = 0
    try:
        for base, info in ((0, sec.info), (TYPES, sec.types)):
            for h in _headers(info, base == TYPES):
                unit_off, end, offset_size, version, unit_type, addr_size, abbrev_off, pos, \
                    sig, type_off = h
                if unit_type == 6:  # a split type unit (.dwo): not read
                    continue
                found.cus.append(base + unit_off)
                if sig is not None:
                    found.sigs[f"{sig:016x}"] = base + unit_off + type_off
                unit = _Unit(unit_off, end, offset_size, base, main, None)
                table = main.abbrevs.table(abbrev_off, offset_size, addr_size, version)
                if not _scan_unit(info, pos, unit, table, st):
                    deferred.append((info, pos, unit, table))
        # this file's partial units without a language: C++ where a C++ unit imports them
        # (directly or through other partial units), else C
        waiting = {d[1]: d for d in deferred}  # by unit DIE offset
        seen = 0
        while seen < len(st.imports) and waiting:
            b, off, cpp = st.imports[seen]
            seen += 1
            if b == 0 and cpp and off in waiting:
                info, pos, unit, table = waiting.pop(off)
                unit.cpp = True
                found.cpp_units.append(unit.offset)
                _scan_unit(info, pos, unit, table, st)  # may import more
        for info, pos, unit, table in waiting.values():
            unit.cpp = False
            _scan_unit(info, pos, unit, table, st)
        if sup is not None:
            _scan_imported(sup, st)
    except (IndexError, KeyError) as e:
        raise ScanError(f"malformed .debug_info near 0x{pos:x} ({type(e).__name__})") from None
    for decl, vals, die_off, unit_base in st.pending:
        name = st.decl_names.get(decl)
        if name is not None:
            _define_var(name, vals, die_off, found)
    _add_locals(found.addrs, st.local_addrs)
    _add_locals(found.tls, st.local_tls)
    found.cus.sort()
    return found


def _scan_imported(sup: Sections, st: _Scan) -> None:
    """The supplementary file's partial units that the scanned units import, and those they
    import in turn (DW_FORM_ref_addr within that file); each once, with the language of its
    first importer."""
    file = _File(sup)
    by_die = {h[7]: h for h in _headers(sup.info)}  # unit DIE offset -> header
    done: set[int] = set()
    while True:
        todo = [(off, cpp) for b, off, cpp in st.imports if b == SUP and off not in done]
        st.imports = [i for i in st.imports if i[0] != SUP]
        if not todo:
            return
        for die, cpp in todo:
            if die in done:
                continue
            done.add(die)
            h = by_die.get(die)
            if h is None:
                continue  # an import of something not a unit: nothing to scan
            unit_off, end, offset_size, version, unit_type, addr_size, abbrev_off, pos = h[:8]
            st.found.cus.append(SUP + unit_off)
            unit = _Unit(unit_off, end, offset_size, SUP, file, None)
            table = file.abbrevs.table(abbrev_off, offset_size, addr_size, version)
            if not _scan_unit(sup.info, pos, unit, table, st):
                unit.cpp = cpp
                if cpp:
                    st.found.cpp_units.append(SUP + unit_off)
                _scan_unit(sup.info, pos, unit, table, st)


class _Names:
    """Name attributes to text, each string offset decoded once."""

    def __init__(self, sec: Sections, alt: Sections | None = None):
        self.sec = sec
        self.alt = alt
        self.memo: dict[tuple, str] = {}

    def text(self, form: int, value, unit: _Unit, info) -> str | None:
        if form == 0x08:  # inline: value is the string's position in .debug_info
            return info[value:info.index(b"\0", value)].decode("utf-8", "replace")
        if form in (0x0E, 0x1F):
            table = self.sec.str if form == 0x0E else self.sec.line_str
        elif form in (0x1A, 0x25, 0x26, 0x27, 0x28, 0x1F02):
            at = unit.str_offsets_base + value * unit.offset_size
            value = int.from_bytes(self.sec.str_offsets[at:at + unit.offset_size], "little")
            form = 0x0E
            table = self.sec.str
        elif form in ALT_STRINGS and self.alt is not None:
            table = self.alt.str  # the supplementary file's .debug_str
        else:
            return None  # a string in a supplementary file that is missing: not indexed
        key = (form, value)
        s = self.memo.get(key)
        if s is None:
            s = self.memo[key] = table[value:table.index(b"\0", value)].decode("utf-8",
                                                                                  "replace")
        return s


def _scan_unit(info, pos: int, unit: _Unit, abbrevs: dict, st: _Scan) -> bool:
    """The DIEs of one unit; False (nothing read) for a partial unit without a language
    while unit.cpp is None. `scopes` holds, per open DIE with children, the name prefix of
    its children and their mode: NAMED (scopes whose names are indexed), LOCAL (inside a
    function: only variables with a fixed location, the function-scope statics and
    `__thread`s) or SKIPPED (below DIEs entered only to get past them).

    A function (and a scope in one) is entered only when its bytes hold the start of what
    may be a variable's fixed location (_fixed_locations: `bytes.find` for FIXED_LOCATIONS,
    at memory speed, each match checked once against the unit's variable layouts): most DIEs
    are inside functions, and reading each would cost several times the rest of the scan. A
    false match costs a function read for nothing; a miss cannot happen, so the index is
    exact."""
    scopes: list[tuple[str, int]] = []
    first = True
    end = unit.end
    bisect_left = bisect.bisect_left
    # where a function-scope variable's fixed location may be (None: anywhere)
    places = _fixed_locations(info, pos, end, end - unit.offset, abbrevs.layouts) \
        if abbrevs.by_bytes else None
    found = st.found
    names = unit.file.names
    base = unit.base
    types, vars_, var_decls = found.types, found.vars, found.var_decls
    while pos < end:
        die_off = pos
        code = info[pos]
        pos += 1
        if code >= 0x80:
            code, pos = _uleb(info, pos - 1)
        if code == 0:  # the end of a scope's children; the last one is the unit's
            if scopes:
                scopes.pop()
            if not scopes:
                return True
            continue
        tag, children, steps = abbrevs[code]
        vals = [None] * NSLOTS
        for op, size, slot, form in steps:
            if op == SKIP:
                pos += size
            elif op == FIXED:
                vals[slot] = (form, int.from_bytes(info[pos:pos + size], "little"))
                pos += size
            elif op == LEB:
                if slot >= 0:
                    v, pos = _uleb(info, pos)
                    vals[slot] = (form, v)
                else:
                    while info[pos] >= 0x80:
                        pos += 1
                    pos += 1
            elif op == CSTR:
                if slot >= 0:
                    vals[slot] = (form, pos)
                pos = info.index(b"\0", pos) + 1
            elif op == BLOCKU:
                n, pos = _uleb(info, pos)
                if slot >= 0:
                    vals[slot] = (form, info[pos:pos + n])
                pos += n
            elif op == PRESENT:
                vals[slot] = (form, 1)
            elif op == IMPLICIT:
                vals[slot] = (form, size)
            elif op == BLOCK1:
                n = info[pos]
                if slot >= 0:
                    vals[slot] = (form, info[pos + 1:pos + 1 + n])
                pos += 1 + n
            elif op == BLOCK2 or op == BLOCK4:
                w = 2 if op == BLOCK2 else 4
                n = int.from_bytes(info[pos:pos + w], "little")
                if slot >= 0:
                    vals[slot] = (form, info[pos + w:pos + w + n])
                pos += w + n
            else:  # INDIRECT: the form is in the data
                raise ScanError(f"DW_FORM_indirect at 0x{die_off:x}")
        if first:  # the unit DIE: its language and string offsets base
            first = False
            if vals[3] is not None:
                unit.cpp = vals[3][1] in CPP_LANGS
            elif unit.cpp is None:
                if tag == T_PARTIAL_UNIT:
                    return False
                unit.cpp = False
            if vals[6] is not None:
                unit.str_offsets_base = vals[6][1]
            if children:
                scopes.append(("", NAMED))
                continue
            return True
        prefix, mode = scopes[-1]
        name = qual = None
        if tag == T_IMPORTED_UNIT and vals[7] is not None:
            form, ref = vals[7]
            if form in ALT_REFS:
                st.imports.append((SUP, ref, unit.cpp))
            elif form == F_REF_ADDR:  # a partial unit of the same file
                st.imports.append((base, ref, unit.cpp))
        elif mode == NAMED:
            nv = vals[2]
            if nv is not None:
                name = names.text(nv[0], nv[1], unit, info)
            kind = TYPE_KINDS.get(tag)
            # a type whose definition is in a type unit (DW_AT_signature) is not one here
            declaration = vals[4] is not None and vals[4][1] or vals[8] is not None
            if kind is not None:
                if name is not None:
                    qual = prefix + name
                if declaration:
                    if qual is not None and unit.cpp:
                        st.type_decls[base + die_off] = qual
                else:
                    if vals[5] is not None:  # C++: defined outside the scope it is declared in
                        qual = st.type_decls.get(_target(vals[5], unit), qual)
                    if qual is not None:
                        types[kind].setdefault(qual, base + die_off)
            elif tag == T_VARIABLE or (tag == T_MEMBER and declaration):
                _record_var(vals, name, prefix, base + die_off, unit, st)
        elif mode == LOCAL and tag == T_VARIABLE and vals[1] is not None:
            _record_local(vals, base + die_off, st)
        if children:
            if mode == NAMED:
                if tag == T_NAMESPACE or (unit.cpp and tag in SCOPES):
                    if qual is not None:
                        scopes.append((qual + "::", NAMED))
                        continue
                    label = name if name is not None else "(anonymous namespace)" \
                        if tag == T_NAMESPACE else None
                    scopes.append((prefix + label + "::", NAMED) if label else ("", SKIPPED))
                    continue
                inner = LOCAL if tag == T_SUBPROGRAM else SKIPPED
            else:
                inner = LOCAL if mode == LOCAL and tag not in CALL_SITES else SKIPPED
            sib = vals[0]
            if sib is not None:
                after = sib[1] + (unit.offset if sib[0] != F_REF_ADDR else 0)
                if inner == SKIPPED:
                    pos = after
                    continue
                if places is not None:
                    i = bisect_left(places, pos)
                    if i == len(places) or places[i] >= after:
                        pos = after  # no fixed location below: no need to look
                        continue
            scopes.append(("", inner))
    return True


def _record_var(vals, name, prefix, die_off, unit, st: _Scan) -> None:
    """A variable (or, in C++, a static member's declaration): its name -> DIE, and its
    address -> DIE when DW_OP_addr gives one. die_off is the index's (tagged) offset."""
    declaration = vals[4] is not None and vals[4][1]
    if name is not None:
        name = prefix + name
        if declaration:
            st.decl_names[die_off] = name
            st.found.var_decls.setdefault(name, die_off)
            return
    elif vals[5] is not None:  # a definition of something declared elsewhere
        decl = _target(vals[5], unit)
        name = st.decl_names.get(decl)
        if name is None:
            if vals[1] is not None:  # its declaration may be in a unit read later
                st.pending.append((decl, vals, die_off, unit.base))
            return
    if name is None or vals[1] is None:
        return
    _define_var(name, vals, die_off, st.found)


def _target(val: tuple[int, int], unit: _Unit) -> int:
    """The index offset of the DIE a reference attribute (form, value) names."""
    form, ref = val
    if form in ALT_REFS:
        return SUP + ref
    if form == F_REF_ADDR:
        return unit.base + ref
    return unit.base + unit.offset + ref


def _define_var(name: str, vals, die_off: int, found: Found) -> None:
    found.vars.setdefault(name, die_off)
    placed = _placed(vals[1][1])
    if placed is not None:
        (found.tls if placed[0] else found.addrs).append((placed[1], die_off))


def _record_local(vals, die_off: int, st: _Scan) -> None:
    """A variable inside a function: kept (not by name: the name is the function's only)
    when its location is fixed, with whether its own DIE is unnamed (a concrete instance
    pointing at its abstract origin), for _add_locals."""
    if vals[4] is not None and vals[4][1]:
        return  # an extern declaration inside a function
    placed = _placed(vals[1][1])
    if placed is not None:
        (st.local_tls if placed[0] else st.local_addrs).append(
            (placed[1], vals[2] is None, die_off))


def _add_locals(into: list[tuple[int, int]], local: list[tuple[int, bool, int]]) -> None:
    """The function-scope variables at addresses (or TLS offsets) no unit-level one has,
    one DIE each: the same static is described again by every unit that emits an inline
    function holding it, and may be by both an abstract instance and a concrete one; its
    own named DIE is kept over an unnamed concrete instance, else the first."""
    seen = {key for key, _ in into}
    for key, _unnamed, die_off in sorted(local):
        if key not in seen:
            seen.add(key)
            into.append((key, die_off))


def _placed(expr) -> tuple[bool, int] | None:
    """(thread-local, address or TLS-block offset) of a fixed location expression: a static
    address (DW_OP_addr) or a `__thread` variable's offset; None for any other location."""
    if not isinstance(expr, bytes):
        return None
    if len(expr) == 9 and expr[0] == DW_OP_ADDR:
        return False, int.from_bytes(expr[1:], "little")
    off = tls_offset(expr)
    return None if off is None else (True, off)


def _fixed_locations(info: bytes, start: int, end: int, unit_len: int, layouts) -> list[int]:
    """Where in info[start:end] (one unit's DIEs) a variable's fixed location may start,
    sorted: each of FIXED_LOCATIONS where the bytes before it fit some variable
    abbreviation's layout (_Table). A true one always fits its own, so none is missed."""
    out: list[int] = []
    if not layouts:
        return out  # no variable in the unit has a block location
    # most matches are call sites' values, rejected by the type reference just before a
    # variable's location: that check first, once for the layouts sharing it
    by_ref: dict[int, list[tuple]] = {}
    for refs, back, head in layouts:
        by_ref.setdefault(refs[0] if refs else 0, []).append((refs[1:], back, head))
    for needle in FIXED_LOCATIONS:
        at = info.find(needle, start, end)
        while at >= 0:
            if _fits(info, at, unit_len, by_ref):
                out.append(at)
            at = info.find(needle, at + 1, end)
    out.sort()
    return out


def _fits(info: bytes, at: int, unit_len: int, by_ref: dict[int, list[tuple]]) -> bool:
    """Whether the bytes before info[at] fit one of the layouts (grouped by first ref4)."""
    for first, group in by_ref.items():
        if first and int.from_bytes(info[at - first:at - first + 4], "little") >= unit_len:
            continue
        for refs, back, head in group:
            for r in refs:
                if int.from_bytes(info[at - r:at - r + 4], "little") >= unit_len:
                    break
            else:
                h = at - back
                if info[h - 1] < 0x80 if head is None else info[h - len(head):h] == head:
                    return True
    return False


def tls_offset(expr: bytes) -> int | None:
    """The offset in its object's TLS block of a `__thread` variable whose location is
    expr (DW_OP_const4u/const8u N, then the TLS op), else None."""
    width = TLS_CONSTS.get(expr[0]) if expr else None
    if width is None or len(expr) != width + 2 or expr[-1] not in TLS_OPS:
        return None
    return int.from_bytes(expr[1:1 + width], "little")


def unit_of(cus: list[int], die_off: int) -> int:
    """The offset of the unit holding a DIE (cus sorted)."""
    return cus[bisect.bisect_right(cus, die_off) - 1]
