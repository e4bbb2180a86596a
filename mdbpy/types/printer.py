"""Values printed as mdb's ::print prints them (mdb_print.c), from a Value and print options.

The shape, for `addr::print struct node`:

    {
        next = 0x4052a0
        value = 0x2a
        tag = [ "first" ]
    }

Each member is indented four spaces a level; integers are hex (`-d` decimal, `-x` hex), char
values quoted, char arrays that hold a printable string `[ "text" ]`, other arrays `[ 0x1, 0x2 ]`
(at most 32 elements unless -l / -L say otherwise), arrays of structs one struct after another
closed by `},`, enums `0x2 (GREEN)`, pointers as a symbol+offset when one contains them (char
pointers followed by the string); `-a` adds addresses, `-t` types, `-h` the holes (padding).
A member path given to ::print names the member in place of an empty name (`b.x = 0x1`).

mdbpy's additions, where mdb's CTF had nothing to say: C++ base classes print as a member named
`<Base>`, static members after the others as `static name = value`, an anonymous union or struct
member as a bare `{`; a pointer outside every symbol is followed by what the caller's `note`
says of it (::print: the heap buffer it points into, briefly).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from mdbpy.errors import MdbError
from mdbpy.output import c_escape, radix_str, symbolic
from mdbpy.types.enums import hex_alt, is_flags, value_label
from mdbpy.types.model import Array, Base, Enum, Pointer, Struct, Type
from mdbpy.types.scalars import decode_float, read_string

if TYPE_CHECKING:
    from mdbpy.types.value import Value

INDENT = 4
ARRAY_LIMIT = 32  # mdb's array_mem_limit default
STRING_LIMIT = 1024  # mdb's array_str_limit default
PTR_STRING = 256  # how much of a char pointer's string is shown


@dataclass
class PrintOptions:
    """::print's options (None limits: no limit)."""

    addr: bool = False  # -a
    types: bool = False  # -t
    base_types: bool = False  # -T
    hex: bool = False  # -x
    dec: bool = False  # -d
    symbolic: bool = True  # -n turns it off
    holes: bool = False  # -h
    array_limit: int | None = ARRAY_LIMIT  # -l / -L
    string_limit: int | None = STRING_LIMIT  # -c / -C
    max_depth: int | None = None  # -s
    values: bool = True  # False: no address, print the layout of the type


def sdec(v: int) -> str:
    """%#d / %#lld: decimal with mdb's 0t prefix above 9 (and on every negative number, whose
    unsigned form is always above 9)."""
    return "-0t" + str(-v) if v < 0 else radix_str(v, 10, prefix=True)


def is_char(t: Type) -> bool:
    """mdb's IS_CHAR: a signed one-byte character type (plain char on x86)."""
    return isinstance(t, Base) and t.is_char and t.signed


def float_text(data: bytes) -> str:
    """mdb's doubletos(d, 7, 'e') (floats, doubles) and longdoubletos(ld, 16, 'e'):
    sign always shown, two-digit exponent."""
    v = decode_float(data)
    digits = 16 if isinstance(v, Decimal) else 7
    if v != v:
        return "+NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    text = format(v, f"+.{digits}e")
    mant, _, exp = text.partition("e")
    sign = "-" if exp.startswith("-") else "+"
    return f"{mant}e{sign}{abs(int(exp)):02d}"


class Printer:
    """Prints Values (or, with values off, a type's layout) into lines of text."""

    def __init__(self, space, opts: PrintOptions, note=None):
        self.space = space
        self.note = note  # note(p): what a pointer outside every symbol points into, or ''
        self.session = space.session
        self.opts = opts
        self.lines: list[str] = []
        self.cur = ""

    # -- entry points ------------------------------------------------------------------------
    def render(self, v: Value, prefix: str | None = None, suffix: str = "") -> str:
        """The whole ::print output for one value (or member path) as text."""
        self.element(v, v.type, "", 0, 0, prefix, suffix)
        self._flush()
        out = "\n".join(line.rstrip() for line in self.lines)
        self.lines = []
        return out

    def _w(self, s: str) -> None:
        self.cur += s

    def _nl(self) -> None:
        self.lines.append(self.cur)
        self.cur = ""

    def _flush(self) -> None:
        if self.cur:
            self._nl()

    # -- one element: the line that names it, then its value -----------------------------------
    def element(self, v: Value, t: Type, name: str | None, depth: int, nest: int,
                prefix: str | None, suffix: str, static: bool = False) -> None:
        """One element as mdb's elt_print writes it: indent, [address], [type], the label
        (the member path at the top levels), ` = `, then the value (a struct's members and
        an array's elements on the lines after)."""
        o = self.opts
        base = self.space.complete(t.strip())
        self._w(" " * (INDENT * (depth + nest)))
        if o.addr and v.address is not None:
            bits = v.bit_field_
            self._w(f"{v.address:x}.{bits[0]:x} " if bits and bits[0] else f"{v.address:x} ")
        if static:
            self._w("static ")
        if o.types:
            tn = self._type_text(t, base)
            self._w(tn)
            if not tn.endswith("*") or (depth == 0 and prefix is None):
                self._w(" ")
        if name is not None:  # an anonymous member has no name, label or ` = `
            if prefix is not None and depth <= 1:
                self._w(prefix + ("" if depth == 0 else suffix))
            self._w(name)
            if o.types and v.bit_field_ is not None:
                self._w(f" :{v.bit_field_[1]}")
            if depth != 0 or prefix is not None:
                self._w(" = " if o.values else " ")
        self._value(v, base, depth, nest, prefix, suffix)

    def _type_text(self, t: Type, base: Type) -> str:
        tn = t.spelled()
        if self.opts.base_types:
            bn = base.spelled()
            if bn != tn and bn not in ("struct {...}", "union {...}", "enum {...}"):
                tn += f" <<{bn}>>"
        return tn

    def _value(self, v: Value, t: Type, depth: int, nest: int, prefix, suffix) -> None:
        o = self.opts
        if isinstance(t, Struct):
            self._struct(v, t, depth, nest, prefix, suffix)
            return
        if isinstance(t, Array):
            if o.values:
                self._array(v, t, depth, nest)
            self._nl()
            return
        if o.values:
            self._w(self.scalar_text(v, t))
        self._nl()

    # -- scalars -------------------------------------------------------------------------------
    def scalar_text(self, v: Value, t: Type) -> str:
        """The text of an integer, character, enum, float or pointer value."""
        o = self.opts
        if isinstance(t, Pointer):
            return self._pointer_text(v, t)
        if isinstance(t, Enum):
            n = int(v)
            text = hex_alt(v.unsigned_()) if o.hex or is_flags(t) else sdec(n)
            return f"{text} ({value_label(t, n)})"
        if isinstance(t, Base):
            if t.is_float:
                return float_text(v.read_()[:t.size])
            if v.bit_field_ is not None or t.size not in (1, 2, 4, 8):
                if o.hex or not t.signed:
                    return radix_str(v.unsigned_(), 10, True) if o.dec else hex_alt(v.unsigned_())
                return sdec(int(v))
            if is_char(t):
                return f"'{c_escape(v.read_()[:1])}'"
            if o.dec:
                return sdec(int(v)) if t.signed else radix_str(v.unsigned_(), 10, True)
            return hex_alt(v.unsigned_())
        return f"<{t.spelled()}>"

    def _pointer_text(self, v: Value, t: Type) -> str:
        p = int(v)
        if not self.opts.symbolic:
            return hex_alt(p)
        text = symbolic(self.session, p)
        if p == 0 or v.type.spelled() == "caddr_t":
            return text
        if is_char(t.target.strip()):
            s = self._c_string(p)
            if s is not None:
                return f'{text} "{s}"'
        if text.startswith("0x") and self.note is not None:
            return text + self.note(p)
        return text

    def _c_string(self, addr: int) -> str | None:
        """The printable string at addr as mdb shows it after a char pointer (None when it
        is unreadable or not printable); a string as long as the buffer ends in ` ...`."""
        try:
            data = read_string(self.space.mem, addr, PTR_STRING)
        except MdbError:
            return None
        nul = data.find(b"\0")
        s = data[:nul] if nul >= 0 else data[:PTR_STRING - 1]
        if not all(32 <= b <= 126 for b in s):
            return None
        text = s.decode("ascii")
        if len(s) >= PTR_STRING - 1:
            text = text[:PTR_STRING - 5] + " ..."
        return text

    # -- arrays --------------------------------------------------------------------------------
    def _array(self, v: Value, t: Array, depth: int, nest: int) -> None:
        o = self.opts
        if o.max_depth is not None and depth >= o.max_depth:
            self._w("[ ... ]")
            return
        elem = self.space.complete(t.element.strip())
        count = t.count or 0
        if is_char(elem) and (o.string_limit is None or count <= o.string_limit) and count:
            s = self._char_array(v, count)
            if s is not None:
                self._w(f'[ "{s}" ]')
                return
        limit = count if o.array_limit is None else min(count, o.array_limit)
        if limit == 0:
            self._w("[ ... ]")
            return
        items = v.elements_(limit)
        if isinstance(elem, (Struct, Array)):
            self._w("[")
            self._nl()
            inner = nest + depth + 1
            for item in items:
                self.element(item, t.element, "", 0, inner, None, "")
            self._w(" " * (INDENT * (depth + nest)) + ("... ]" if limit < count else "]"))
            return
        texts = [self.scalar_text(item, elem) for item in items]
        self._w("[ " + ", ".join(texts) + (", ... ]" if limit < count else " ]"))

    def _char_array(self, v: Value, count: int) -> str | None:
        """The array's string up to its first NUL, when that is printable and not empty."""
        data = v.read_()[:count]
        nul = data.find(b"\0")
        s = data if nul < 0 else data[:nul]
        if not s or not all(32 <= b <= 126 for b in s):
            return None
        return s.decode("ascii")

    # -- structs and unions --------------------------------------------------------------------
    def _struct(self, v: Value, t: Struct, depth: int, nest: int, prefix, suffix) -> None:
        o = self.opts
        if not t.complete:
            self._w(f"<forward declaration of {t.spelled()}>")
            self._nl()
            return
        if o.max_depth is not None and depth >= o.max_depth:
            self._w("{ ... }")
            self._nl()
            return
        self._w("{")
        self._nl()
        if o.values and v.address is not None:
            v.read_()  # one read for the whole struct; members slice it
        expected = 0  # the bit where the next member should start (-h)
        for m in t.members:
            mv = v.member_value_(m)
            if o.holes and not t.is_union and m.offset is not None:
                if m.bit_position > expected:
                    self._hole(v, expected, m.bit_position, depth + 1, nest)
                expected = max(expected, m.bit_position + (
                    m.bit_size if m.is_bitfield else 8 * (m.type.strip().size or 0)))
            self.element(mv, m.type, m.name, depth + 1, nest, prefix, suffix)
        if o.holes and not t.is_union and t.size and expected < 8 * t.size:
            self._hole(v, expected, 8 * t.size, depth + 1, nest)
        for s in t.statics:
            self._static(v, s, depth + 1, nest, prefix, suffix)
        self._w(" " * (INDENT * (depth + nest)) + "}" + ("," if depth == 0 and nest else ""))
        self._nl()

    def _static(self, v: Value, s, depth: int, nest: int, prefix, suffix) -> None:
        """A static member, printed as a value of its own (of the kind of v, its class's:
        the printer builds no values of its own kind)."""
        where = self.space.static_member(s.qualname)
        if where is None:
            self._w(" " * (INDENT * (depth + nest)) + f"static {s.name} = <optimized out>")
            self._nl()
            return
        t, addr = where
        self.element(type(v)(self.space, t, addr if self.opts.values else None), t, s.name,
                     depth, nest, prefix, suffix, static=True)

    def _hole(self, v: Value, start: int, end: int, depth: int, nest: int) -> None:
        """`<<HOLE>>` lines for the padding between start and end (bits), split at 64-bit
        boundaries as mdb's print_hole splits them."""
        while start < end:
            stop = min(end, (start // 64 + 1) * 64)
            bits = stop - start
            bitfield = start % 8 or bits % 8 or bits // 8 not in (1, 2, 4, 8)
            self._w(" " * (INDENT * (depth + nest)))
            addr = (v.address or 0) + start // 8
            if self.opts.addr:
                self._w(f"{addr:x}.{start % 8:x} " if start % 8 else f"{addr:x} ")
            if self.opts.types:
                self._w("unsigned " if bitfield else f"uint{bits}_t ")
            self._w("<<HOLE>>")
            if bitfield and self.opts.types:
                self._w(f" :{bits}")
            if self.opts.values:
                first, shift = divmod(start, 8)
                raw = v.read_()[first:first + (shift + bits + 7) // 8]
                val = (int.from_bytes(raw, "little") >> shift) & ((1 << bits) - 1)
                self._w(" = " + hex_alt(val))
            self._nl()
            start = stop


def pipe_text(v: Value, base: Type, opts: PrintOptions, radix: int) -> str:
    """What ::print passes down a pipe (mdb's pipe_print): the address with -a, and of
    aggregates and floats; the value of pointers, integers and enums."""
    if opts.addr or not isinstance(base, (Pointer, Enum, Base)) or (
            isinstance(base, Base) and base.is_float):
        if v.address is None:
            raise MdbError(f"{v.type.spelled()} has no address to pass on")
        return radix_str(v.address, radix, prefix=True)
    if v.bit_field_ is not None and isinstance(base, Base) and base.signed and not opts.hex:
        return sdec(int(v))
    return radix_str(v.unsigned_(), radix, prefix=True)
