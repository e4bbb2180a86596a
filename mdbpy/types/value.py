"""A typed value in the target, in the style of drgn's Object.

A Value is a type and where its bytes are: an address in the target (read once, when first
needed, all of the object at once) or bytes already in hand (a member of a struct that was read,
an element of an array, `::print -i` data). Members and elements slice their parent's bytes
instead of reading again, so printing a struct costs one read however many members it has.
Conversions decode by the stripped type: int() for integers, enums, pointers and bitfields,
float() for floating point, str() prints the value as ::print does.

`v.name` reads the member `name`; so that few member names are hidden, everything but the
drgn-like core (type, address, member, deref, list, indexing) ends in an underscore, as drgn
names its own (`value_()`, `string_()`, `read_()`).
"""

from __future__ import annotations

from mdbpy.errors import MdbError
from mdbpy.types.model import Array, Base, Enum, Function, Pointer, Struct, Type
from mdbpy.types.scalars import MASK64, decode_float, read_string



class Value:
    """A value of `type` at `address` (None for a value not in memory)."""

    def __init__(self, space, type_: Type, address: int | None = None, data: bytes | None = None,
                 bits: tuple[int, int] | None = None):
        self._space = space
        self._type = type_
        self._address = address
        self._data = data
        self._bits = bits  # a bitfield: (first bit within the bytes, width)

    # -- what it is ----------------------------------------------------------------------------
    @property
    def type(self) -> Type:
        return self._type

    @property
    def address(self) -> int | None:
        return self._address

    @property
    def kind_(self) -> Type:
        """The type that says how the bytes decode: typedefs and qualifiers looked through,
        a declared-only struct completed from another object."""
        return self._space.complete(self._type.strip())

    @property
    def bit_field_(self) -> tuple[int, int] | None:
        """A bitfield's (first bit within its bytes, width); None for other values."""
        return self._bits

    def read_(self) -> bytes:
        """The value's bytes, read from the target on first use."""
        if self._data is None:
            size = self._nbytes()
            if self._address is None:
                raise MdbError(f"{self._type.spelled()} has no bytes to read")
            self._data = self._space.mem.read(self._address, size)
        return self._data

    def _nbytes(self) -> int:
        if self._bits is not None:
            return (self._bits[0] + self._bits[1] + 7) // 8
        size = self.kind_.size
        if size is None:
            raise MdbError(f"{self._type.spelled()} has no size (incomplete type)")
        return size

    # -- members, elements, pointers ----------------------------------------------------------
    def field_(self, name: str) -> Value:
        """The member `name` of a struct or union value (C's `.`), looking into anonymous
        members and base classes."""
        t = self.kind_
        if not isinstance(t, Struct):
            raise MdbError(f"{self._type.spelled()} is not a struct or union type")
        chain = t.find(name)
        if chain is None:
            raise MdbError(f"failed to find member {name} of {self._type.spelled()}")
        v = self
        for m in chain:
            v = v.member_value_(m)
        return v

    def member_value_(self, m) -> Value:
        """The value of one Member of this struct value."""
        if m.offset is None:
            raise MdbError(f"member {m.name} of {self._type.spelled()} has no fixed offset")
        if m.is_bitfield:
            first, shift = divmod(m.bit_position, 8)
            bits = (shift, m.bit_size)
            n = (shift + m.bit_size + 7) // 8
            return Value(self._space, m.type, self._at(first), self._slice(first, n), bits)
        size = m.type.strip().size
        return Value(self._space, m.type, self._at(m.offset),
                     self._slice(m.offset, size) if size is not None else None)

    def member(self, name: str) -> Value:
        """drgn's member_: `.` on a struct, `->` on a pointer to one."""
        v = self.deref() if isinstance(self.kind_, Pointer) else self
        return v.field_(name)

    def __getattr__(self, name: str) -> Value:
        """`v.next` for v.member("next") (methods and properties take precedence)."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.member(name)
        except MdbError as e:
            raise AttributeError(str(e)) from None

    def deref(self) -> Value:
        """The value a pointer points at (C's `*p`)."""
        t = self.kind_
        if not isinstance(t, Pointer):
            raise MdbError(f"{self._type.spelled()} is not a pointer type")
        return Value(self._space, t.target, self._pointee(0))

    def _pointee(self, offset: int) -> int:
        p = int(self)
        if p == 0:
            raise MdbError(f"cannot dereference a NULL {self._type.spelled()}")
        return (p + offset) & MASK64

    def __getitem__(self, i: int) -> Value:
        """Element i of an array (bounds checked when the length is known) or of what a
        pointer points at (C's `p[i]`)."""
        t = self.kind_
        if isinstance(t, Array):
            if t.count is not None and not 0 <= i < t.count:
                raise IndexError(f"index {i} is outside of array bounds [0 .. {t.count - 1}]")
            return self.element_(i)
        if isinstance(t, Pointer):
            es = t.target.strip().size
            if not es:
                raise MdbError("cannot dereference void type")
            return Value(self._space, t.target, self._pointee(i * es))
        raise MdbError("cannot index into non-array, non-pointer type")

    def element_(self, i: int) -> Value:
        t = self.kind_
        es = t.element.strip().size
        if es is None:
            raise MdbError(f"{t.element.spelled()} has no size")
        return Value(self._space, t.element, self._at(i * es), self._slice(i * es, es))

    def elements_(self, n: int) -> list[Value]:
        """The first n elements, read with one read when the array was not read yet."""
        t = self.kind_
        es = t.element.strip().size or 0
        if self._data is None and self._address is not None and n and es:
            whole = Value(self._space, t, self._address,
                          self._space.mem.read(self._address, n * es))
            return [whole.element_(i) for i in range(n)]
        return [self.element_(i) for i in range(n)]

    def __len__(self) -> int:
        t = self.kind_
        if isinstance(t, Array) and t.count is not None:
            return t.count
        raise TypeError(f"{self._type.spelled()} has no length")

    def __iter__(self):
        """The elements of an array of known length."""
        return (self.element_(i) for i in range(len(self)))

    def list(self, next_member: str = "next", limit: int | None = None):
        """The structs of a singly linked list, starting at this struct (or at what this
        pointer points at) and following `next_member`, as `::list` walks it: to NULL, a
        return to an element already seen, or `limit` elements."""
        start = self.deref() if isinstance(self.kind_, Pointer) else self
        chain = start.kind_.find(next_member) if isinstance(start.kind_, Struct) else None
        if chain is None:
            raise MdbError(f"failed to find member {next_member} of {start.type.spelled()}")
        offset = sum(m.offset or 0 for m in chain)
        if start.address is None:
            raise MdbError("a list must start at a value in memory")
        for addr in self._space.mem.follow(start.address, offset, limit):
            yield Value(self._space, start.type, addr)

    def _at(self, off: int) -> int | None:
        return None if self._address is None else (self._address + off) & MASK64

    def _slice(self, off: int, n: int | None) -> bytes | None:
        if self._data is None or n is None:
            return None
        piece = self._data[off:off + n]
        return piece if len(piece) == n else None

    # -- conversions ---------------------------------------------------------------------------
    def __int__(self) -> int:
        t = self.kind_
        data = self.read_()
        if self._bits is not None:
            shift, width = self._bits
            v = (int.from_bytes(data, "little") >> shift) & ((1 << width) - 1)
            if _signed(t) and v >> (width - 1):
                v -= 1 << width
            return v
        if isinstance(t, Pointer):
            return int.from_bytes(data[:t.size], "little")
        if isinstance(t, Enum):
            return int.from_bytes(data[:t.size], "little", signed=t.signed)
        if isinstance(t, Base):
            if t.is_float:
                return int(float(self))
            return int.from_bytes(data[:t.size], "little", signed=t.signed)
        raise MdbError(f"{self._type.spelled()} is not an integer or pointer type")

    __index__ = __int__

    def __float__(self) -> float:
        t = self.kind_
        if isinstance(t, Base) and t.is_float:
            return float(decode_float(self.read_()[:t.size]))
        return float(int(self))

    def __bool__(self) -> bool:
        t = self.kind_
        if isinstance(t, (Struct, Array, Function)):
            return True
        return bool(float(self)) if isinstance(t, Base) and t.is_float else bool(int(self))

    def unsigned_(self) -> int:
        """The bits as an unsigned number of the value's width (what mdb's hex shows)."""
        v = int(self)
        width = self._bits[1] if self._bits is not None else 8 * (self.kind_.size or 8)
        return v & ((1 << width) - 1)

    def string_(self, limit: int = 4096) -> bytes:
        """The C string a char pointer or char array holds (up to its NUL, at most limit)."""
        t = self.kind_
        if isinstance(t, Array):
            data = self.read_()[:limit]
        elif isinstance(t, Pointer):
            data = read_string(self._space.mem, int(self), limit)
        else:
            raise MdbError(f"{self._type.spelled()} is not a string type")
        nul = data.find(b"\0")
        return data if nul < 0 else data[:nul]

    def value_(self):
        """The value as Python data: ints, floats, lists for arrays, dicts for structs
        (members by name, anonymous members merged in), as drgn's value_()."""
        t = self.kind_
        if isinstance(t, Struct):
            out = {}
            for m in t.members:
                v = self.member_value_(m).value_()
                if m.name is None and isinstance(v, dict):
                    out.update(v)
                else:
                    out[m.name] = v
            return out
        if isinstance(t, Array):
            if t.count is None:
                return []
            return [e.value_() for e in self.elements_(t.count)]
        if isinstance(t, Base) and t.is_float:
            return float(self)
        return int(self)

    def __str__(self) -> str:
        from mdbpy.types.printer import PrintOptions, Printer

        return Printer(self._space, PrintOptions()).render(self)

    def __repr__(self) -> str:
        where = "" if self._address is None else f", address=0x{self._address:x}"
        return f"Value({self._type.spelled()!r}{where})"


def _signed(t: Type) -> bool:
    return (isinstance(t, Base) and t.signed) or (isinstance(t, Enum) and t.signed)
