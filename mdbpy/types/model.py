"""The type model: what C and C++ types are, independent of where they were read from.

DWARF types refer to each other in cycles (`struct node { struct node *next; }`) and a libc
struct reaches hundreds of others through its pointers, so the references that can start a
cycle or a long chase (a pointer's target, a typedef's, a struct's member list) may be given
as a loader, a function called on first use; everything else is plain data. `strip()` is mdb's
type_resolve: it looks through typedefs and qualifiers to the type that says how bytes decode.
"""

from __future__ import annotations

from dataclasses import dataclass

# DW_ATE encodings of base types
ATE_BOOLEAN, ATE_COMPLEX, ATE_FLOAT, ATE_SIGNED, ATE_SIGNED_CHAR = 0x02, 0x03, 0x04, 0x05, 0x06
ATE_UNSIGNED, ATE_UNSIGNED_CHAR, ATE_UTF = 0x07, 0x08, 0x10
SIGNED_ATES = (ATE_SIGNED, ATE_SIGNED_CHAR)
CHAR_ATES = (ATE_SIGNED_CHAR, ATE_UNSIGNED_CHAR)
QUALIFIER_ORDER = ("const", "volatile", "restrict", "_Atomic")  # as gdb writes them


def _lazy(obj, attr: str):
    """obj.<attr>, calling and replacing it first when it is still a loader."""
    v = obj.__dict__[attr]
    if callable(v) and not isinstance(v, Type):
        v = v()
        obj.__dict__[attr] = v
    return v


class Type:
    """The base of every type. `size` is in bytes, None where C has none (void, functions,
    incomplete structs, arrays of unknown length)."""

    kind = "?"
    name: str | None = None
    size: int | None = None

    def strip(self) -> Type:
        return self

    def spelled(self) -> str:
        """The C spelling, as gdb's ptype and mdb's -t print it: `struct node *`,
        `int [4]`, `int (*)(int, char *)`."""
        return declarator(self, "").strip()

    def __str__(self) -> str:
        return self.spelled()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spelled()}>"

    # kinds, as the printers ask for them (on stripped types)
    def is_integer(self) -> bool:
        return False

    def is_struct(self) -> bool:
        return False


class Void(Type):
    kind = "void"

    def __init__(self, name: str = "void"):
        self.name = name


class Base(Type):
    """An integer, character, boolean or floating-point type (DW_TAG_base_type)."""

    kind = "base"

    def __init__(self, name: str, size: int, encoding: int):
        self.name = name
        self.size = size
        self.encoding = encoding

    @property
    def signed(self) -> bool:
        return self.encoding in SIGNED_ATES

    @property
    def is_char(self) -> bool:
        """One-byte characters, which mdb prints as 'c' and as strings in arrays."""
        return self.encoding in CHAR_ATES and self.size == 1

    @property
    def is_float(self) -> bool:
        return self.encoding in (ATE_FLOAT, ATE_COMPLEX)

    def is_integer(self) -> bool:
        return not self.is_float


class Pointer(Type):
    """A pointer, or a C++ reference (`ref` '&' or '&&'), to `target` (a loader until used)."""

    kind = "pointer"

    def __init__(self, target, size: int = 8, ref: str = ""):
        self.__dict__["target"] = target
        self.size = size
        self.ref = ref

    @property
    def target(self) -> Type:
        return _lazy(self, "target")


class Array(Type):
    """`count` elements of `element`; count None: a flexible or unknown-length array."""

    kind = "array"

    def __init__(self, element: Type, count: int | None):
        self.element = element
        self.count = count

    @property
    def size(self) -> int | None:
        es = self.element.strip().size
        return None if self.count is None or es is None else es * self.count


class _Alias(Type):
    """A type that is another type under a name or with qualifiers: its size and its
    stripped form are its target's."""

    @property
    def target(self) -> Type:
        return _lazy(self, "target")

    @property
    def size(self) -> int | None:
        return self.target.size

    def strip(self) -> Type:
        return self.target.strip()


class Typedef(_Alias):
    kind = "typedef"

    def __init__(self, name: str, target):
        self.name = name
        self.__dict__["target"] = target


class Qualified(_Alias):
    """const, volatile, restrict or _Atomic applied to `target`."""

    kind = "qualified"

    def __init__(self, target, quals: tuple[str, ...]):
        self.__dict__["target"] = target
        self.quals = quals


@dataclass
class Member:
    """A data member. `offset` is in bytes (None where DWARF computes it at run time, as for
    virtual bases); a bitfield has `bit_size` and `bit_offset`, its first bit counted from the
    start of the struct in little-endian bit order."""

    name: str | None
    type_: object  # a Type, or a loader until used
    offset: int | None
    bit_size: int | None = None
    bit_offset: int | None = None
    base: bool = False  # a C++ base-class subobject, named `<Base>` as gdb names it

    @property
    def type(self) -> Type:
        if callable(self.type_) and not isinstance(self.type_, Type):
            self.type_ = self.type_()
        return self.type_

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size is not None

    @property
    def bit_position(self) -> int:
        """The member's first bit from the start of the struct."""
        if self.bit_offset is not None:
            return self.bit_offset
        return 8 * (self.offset or 0)


@dataclass
class Static:
    """A C++ static data member: its type, and the qualified name (`ns::Class::member`) under
    which the program defines it as a global."""

    name: str
    type_: object
    qualname: str

    @property
    def type(self) -> Type:
        if callable(self.type_) and not isinstance(self.type_, Type):
            self.type_ = self.type_()
        return self.type_


class Struct(Type):
    """A struct, union or class. `members` may be a loader (members are read when first
    needed); `complete` is False for a declaration whose definition was not found."""

    kind = "struct"

    def __init__(self, tag: str, name: str | None, size: int | None, members=(),
                 complete: bool = True, statics=(), cxx: bool = False):
        self.tag = tag  # 'struct', 'union' or 'class'
        self.name = name
        self.cxx = cxx  # a C++ class: its name is the type's whole spelling
        self.size = size
        self.__dict__["members"] = members
        self.__dict__["statics"] = statics
        self.complete = complete

    @property
    def members(self) -> list[Member]:
        return _lazy(self, "members")

    @property
    def statics(self) -> list[Static]:
        return _lazy(self, "statics")

    def is_struct(self) -> bool:
        return True

    @property
    def is_union(self) -> bool:
        return self.tag == "union"

    def find(self, name: str) -> list[Member] | None:
        """The chain of members that reaches the member `name`, looking into anonymous
        members and base classes as C and C++ do: [m] for a direct member, [anon, m] for one
        inside an anonymous union; None when there is none."""
        for m in self.members:
            if m.name == name:
                return [m]
        for m in self.members:
            if m.name is None or m.base:
                inner = m.type.strip()
                if isinstance(inner, Struct):
                    chain = inner.find(name)
                    if chain is not None:
                        return [m, *chain]
        return None

    def trailing_array(self) -> tuple[int, Type] | None:
        """(offset, element type) of the struct's trailing flexible array (`T items[]`, or
        GNU's `T items[0]`), or None."""
        if not self.complete or self.is_union or not self.members:
            return None
        last = self.members[-1]
        at = last.type.strip()
        if not isinstance(at, Array) or at.count not in (None, 0) or last.offset is None:
            return None
        return last.offset, at.element


class Enum(Type):
    kind = "enum"

    def __init__(self, name: str | None, size: int, enumerators: list[tuple[str, int]],
                 signed: bool = False, complete: bool = True):
        self.name = name
        self.size = size
        self.enumerators = enumerators
        self.signed = signed
        self.complete = complete

    def is_integer(self) -> bool:
        return True

    def name_of(self, value: int) -> str | None:
        return next((n for n, v in self.enumerators if v == value), None)


class Function(Type):
    """A function type: pointers to it are function pointers."""

    kind = "function"

    def __init__(self, ret: Type, params: list[Type], varargs: bool = False,
                 prototyped: bool = True):
        self.ret = ret
        self.params = params
        self.varargs = varargs
        self.prototyped = prototyped


def tag_name(t: Type) -> str:
    """`struct foo`, `union u`, `enum e` (`struct {...}` when unnamed)."""
    if isinstance(t, Struct):
        if t.cxx and t.name:
            return t.name
        return f"{t.tag} {t.name}" if t.name else f"{t.tag} {{...}}"
    if isinstance(t, Enum):
        return f"enum {t.name}" if t.name else "enum {...}"
    return t.name or "?"


def declarator(t: Type, inner: str) -> str:
    """The C declaration of `inner` as a t: `int *p`, `char name[16]`, `void (*fn)(int)`.
    With inner empty, the abstract declarator gdb prints: `char *`, `int [4]`."""
    if isinstance(t, Qualified):
        quals, target = set(t.quals), t.target
        while isinstance(target, Qualified):  # volatile(const(int)): `const volatile int`
            quals.update(target.quals)
            target = target.target
        text = " ".join(q for q in QUALIFIER_ORDER if q in quals)
        if isinstance(target, Pointer):
            return _pointer(target, inner, text)
        return f"{text} {declarator(target, inner)}"
    if isinstance(t, Pointer):
        return _pointer(t, inner, "")
    if isinstance(t, Array):
        return declarator(t.element, f"{inner}[{'' if t.count is None else t.count}]")
    if isinstance(t, Function):
        params = [p.spelled() for p in t.params]
        if t.varargs:
            params.append("...")
        if not params and t.prototyped:
            params = ["void"]
        return declarator(t.ret, f"{inner}({', '.join(params)})")
    base = tag_name(t) if isinstance(t, (Struct, Enum)) else (t.name or "?")
    return f"{base} {inner}" if inner else base


def _pointer(t: Pointer, inner: str, quals: str) -> str:
    star = t.ref or "*"
    if quals:
        star += " " + quals + (" " if inner else "")
    inner = star + inner
    if isinstance(t.target, (Array, Function)):
        inner = f"({inner})"
    return declarator(t.target, inner)
