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
static of the same name.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# tags (DWARF 5, 7.5.1)
T_ARRAY, T_CLASS, T_ENUM, T_MEMBER, T_STRUCT, T_TYPEDEF, T_UNION = 0x01, 0x02, 0x04, 0x0D, 0x13, \
    0x16, 0x17
T_BASE, T_VARIABLE, T_NAMESPACE, T_UNSPECIFIED = 0x24, 0x34, 0x39, 0x3B
TYPE_KINDS = {T_STRUCT: "struct", T_CLASS: "struct", T_UNION: "union", T_ENUM: "enum",
              T_TYPEDEF: "typedef", T_BASE: "base", T_UNSPECIFIED: "base"}
SCOPES = (T_STRUCT, T_CLASS, T_UNION)
CPP_LANGS = {0x04, 0x1A, 0x21, 0x2B}  # DW_LANG_C_plus_plus, _03, _11, _14

# attributes captured, and the slot each lands in
A_SIBLING, A_LOCATION, A_NAME, A_LANGUAGE, A_DECLARATION, A_SPECIFICATION = 0x01, 0x02, 0x03, \
    0x13, 0x3C, 0x47
A_STR_OFFSETS_BASE = 0x72
SLOTS = {A_SIBLING: 0, A_LOCATION: 1, A_NAME: 2, A_LANGUAGE: 3, A_DECLARATION: 4,
         A_SPECIFICATION: 5, A_STR_OFFSETS_BASE: 6}
NSLOTS = 7

# step operations
SKIP, LEB, CSTR, BLOCK1, BLOCK2, BLOCK4, BLOCKU, FIXED, PRESENT, INDIRECT, IMPLICIT = range(11)

DW_OP_ADDR = 0x03
# a thread-local variable's location: its offset in its object's TLS block, then the op that
# makes it an address in the current thread (DW_OP_form_tls_address, DW_OP_GNU_push_tls_address)
TLS_CONSTS = {0x0C: 4, 0x0E: 8}  # DW_OP_const4u, DW_OP_const8u
TLS_OPS = (0x9B, 0xE0)
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

    def as_json(self) -> dict:
        self.addrs.sort()
        self.tls.sort()
        return {"cus": self.cus, "types": self.types, "vars": self.vars,
                "var_decls": self.var_decls,
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


class _Abbrevs:
    """Abbreviation tables by offset, each compiled to {code: (tag, children, steps)} for one
    unit shape (offset size, address size, version); steps are (op, size, slot, form)."""

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
        data, out = self.data, {}
        while True:
            code, pos = _uleb(data, pos)
            if code == 0:
                return out
            tag, pos = _uleb(data, pos)
            children = data[pos]
            pos += 1
            steps: list[tuple] = []
            while True:
                name, pos = _uleb(data, pos)
                form, pos = _uleb(data, pos)
                if name == 0 and form == 0:
                    break
                implicit = None
                if form == 0x21:
                    implicit, pos = _sleb(data, pos)
                op, size = _form_step(form, offset_size, addr_size, version)
                slot = SLOTS.get(name, -1)
                if op == IMPLICIT:
                    size = implicit
                if slot < 0 and op in (IMPLICIT, PRESENT):
                    continue  # nothing in the DIE's bytes, nothing wanted
                if slot < 0 and op == FIXED:
                    op = SKIP
                    if steps and steps[-1][0] == SKIP:  # merge runs of fixed-size skips
                        size += steps.pop()[1]
                steps.append((op, size, slot, form))
            out[code] = (tag, children, tuple(steps))


class _Unit:
    """What one unit's DIEs need to decode their captured attributes."""

    __slots__ = ("offset", "end", "offset_size", "str_offsets_base", "cpp")

    def __init__(self, offset: int, end: int, offset_size: int):
        self.offset = offset
        self.end = end
        self.offset_size = offset_size
        self.str_offsets_base = 8 if offset_size == 4 else 16
        self.cpp = False


def scan(sec: Sections) -> Found:
    """Every unit of .debug_info; raises ScanError on bytes it cannot follow."""
    found = Found()
    abbrevs = _Abbrevs(sec.abbrev)
    names = _Names(sec)
    info = sec.info
    pos = 0
    try:
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
            if version >= 5:
                unit_type = info[pos]
                addr_size = info[pos + 1]
                abbrev_off = int.from_bytes(info[pos + 2:pos + 2 + offset_size], "little")
                pos += 2 + offset_size
                if unit_type in (2, 6):  # type units: signature and type offset
                    pos += 8 + offset_size
                elif unit_type in (4, 5):  # skeleton and split units: dwo id
                    pos += 8
            elif version >= 2:
                abbrev_off = int.from_bytes(info[pos:pos + offset_size], "little")
                addr_size = info[pos + offset_size]
                pos += offset_size + 1
            else:
                raise ScanError(f"unit at 0x{unit_off:x}: DWARF version {version}")
            found.cus.append(unit_off)
            unit = _Unit(unit_off, end, offset_size)
            _scan_unit(info, pos, unit, abbrevs.table(abbrev_off, offset_size, addr_size,
                                                      version), names, found)
            pos = end
    except (IndexError, KeyError) as e:
        raise ScanError(f"malformed .debug_info near 0x{pos:x} ({type(e).__name__})") from None
    return found


class _Names:
    """Name attributes to text, each string offset decoded once."""

    def __init__(self, sec: Sections):
        self.sec = sec
        self.memo: dict[tuple, str] = {}

    def text(self, form: int, value, unit: _Unit, info) -> str | None:
        if form == 0x08:  # inline: value is the string's position in .debug_info
            return info[value:info.index(b"\0", value)].decode("utf-8", "replace")
        if form in (0x0E, 0x1F):
            table = self.sec.str if form == 0x0E else self.sec.line_str
        elif form in (0x1A, 0x25, 0x26, 0x27, 0x28, 0x1F02):
            at = unit.str_offsets_base + value * unit.offset_size
            value = int.from_bytes(self.sec.str_offsets[at:at + unit.offset_size], "little")
            table = self.sec.str
        else:
            return None  # a string in a supplementary file (dwz): not indexed
        key = (form == 0x1F, value)
        s = self.memo.get(key)
        if s is None:
            s = self.memo[key] = table[value:table.index(b"\0", value)].decode("utf-8",
                                                                                   "replace")
        return s


def _scan_unit(info, pos: int, unit: _Unit, abbrevs: dict, names: _Names, found: Found) -> None:
    """The DIEs of one unit. `scopes` holds, per open DIE with children, the name prefix of
    its children and whether they are recorded (False below DIEs entered only to skip them)."""
    scopes: list[tuple[str, bool]] = []
    decl_names: dict[int, str] = {}  # declarations seen (offset -> name), for specifications
    first = True
    end = unit.end
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
                return
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
            if vals[6] is not None:
                unit.str_offsets_base = vals[6][1]
            if children:
                scopes.append(("", True))
                continue
            return
        prefix, record = scopes[-1]
        name = None
        if record:
            nv = vals[2]
            if nv is not None:
                name = names.text(nv[0], nv[1], unit, info)
            kind = TYPE_KINDS.get(tag)
            declaration = vals[4] is not None and vals[4][1]
            if kind is not None and name is not None and not declaration:
                types[kind].setdefault(prefix + name, die_off)
            elif tag == T_VARIABLE or (tag == T_MEMBER and declaration):
                _record_var(vals, name, prefix, die_off, unit, decl_names, vars_, var_decls,
                            found)
        if children:
            sib = vals[0]
            enter = record and (tag == T_NAMESPACE or (unit.cpp and tag in SCOPES))
            if not enter and sib is not None:
                pos = sib[1] + (unit.offset if sib[0] != 0x10 else 0)
                continue
            if enter:
                label = name if name is not None else "(anonymous namespace)" \
                    if tag == T_NAMESPACE else None
                scopes.append((prefix + label + "::", True) if label else ("", False))
            else:
                scopes.append(("", False))


def _record_var(vals, name, prefix, die_off, unit, decl_names, vars_, var_decls, found) -> None:
    """A variable (or, in C++, a static member's declaration): its name -> DIE, and its
    address -> DIE when DW_OP_addr gives one."""
    declaration = vals[4] is not None and vals[4][1]
    if name is not None:
        name = prefix + name
        if declaration:
            decl_names[die_off] = name
            var_decls.setdefault(name, die_off)
            return
    elif vals[5] is not None:  # a definition of something declared earlier
        form, ref = vals[5]
        name = decl_names.get(ref + (unit.offset if form != 0x10 else 0))
    loc = vals[1]
    if name is None or loc is None:
        return
    vars_.setdefault(name, die_off)
    expr = loc[1]
    if isinstance(expr, bytes) and len(expr) == 9 and expr[0] == DW_OP_ADDR:
        found.addrs.append((int.from_bytes(expr[1:], "little"), die_off))
    elif isinstance(expr, bytes):
        off = tls_offset(expr)
        if off is not None:
            found.tls.append((off, die_off))


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
