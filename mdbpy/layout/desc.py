"""The layout descriptor language: C structs written once, as data.

A descriptor names its fields in declaration order with types built from ABI primitives; the
byte offsets are not written down but computed when the descriptor is bound to an ABI and an
allocator version (bind.py), exactly as a C compiler lays the struct out. So one descriptor
serves every version and every LP64 target, and DWARF, when the target has it, can replace the
computed offsets field by field.

    MALLOC_STATE = Struct("malloc_state", source="glibc malloc/malloc.c", fields=[
        Field("mutex", I32),
        Field("flags", I32),
        Field("have_fastchunks", I32, since=(2, 27)),
        Field("fastbinsY", Array(PTR, 10)),
        ...
        Derived("fastbin_count", lambda v: len(v.fastbinsY)),
    ])

Field options: `since=` / `until=` (version predicates: present when since <= version < until),
`when=` (any predicate over the version), `aliases=` (other names the same field has had, so
walkers name it once), `align=` (an explicit alignment). A Derived field is computed from a view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


# -- types ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prim:
    """An ABI primitive. size/align of 0 mean 'ask the ABI' (pointer, long, size_t)."""

    name: str
    size: int = 0
    signed: bool = False
    kind: str = "int"  # 'int', 'ptr', 'char', 'float'

    def __repr__(self):
        return self.name


@dataclass(frozen=True)
class Array:
    """elem[count]; count None is a flexible trailing array (size 0, indexable by the view)."""

    elem: object
    count: int | None

    def __repr__(self):
        return f"{self.elem!r}[{'' if self.count is None else self.count}]"


@dataclass(frozen=True)
class Ref:
    """A nested struct by name, resolved in the descriptor set when binding."""

    name: str

    def __repr__(self):
        return f"struct {self.name}"


@dataclass(frozen=True)
class Opaque:
    """A type whose size depends on the ABI (pthread_mutex_t): looked up by name in the ABI."""

    name: str

    def __repr__(self):
        return self.name


U8 = Prim("uint8_t", 1)
U16 = Prim("uint16_t", 2)
U32 = Prim("uint32_t", 4)
U64 = Prim("uint64_t", 8)
I8 = Prim("int8_t", 1, signed=True)
I16 = Prim("int16_t", 2, signed=True)
I32 = Prim("int32_t", 4, signed=True)
I64 = Prim("int64_t", 8, signed=True)
CHAR = Prim("char", 1, signed=True, kind="char")
INT = Prim("int", 4, signed=True)
UINT = Prim("unsigned int", 4)
LONG = Prim("long", 0, signed=True)
ULONG = Prim("unsigned long", 0)
SIZE_T = Prim("size_t", 0)
SSIZE_T = Prim("ssize_t", 0, signed=True)
UINTPTR = Prim("uintptr_t", 0)
PTR = Prim("void *", 0, kind="ptr")


# -- fields and structs ---------------------------------------------------------------------
Version = tuple


@dataclass(frozen=True)
class Field:
    name: str
    type: object
    since: Version | None = None
    until: Version | None = None
    when: Callable[[Version], bool] | None = None
    aliases: tuple[str, ...] = ()
    align: int | None = None

    def present(self, version: Version | None) -> bool:
        if version is None:
            return self.since is None and self.until is None and self.when is None
        if self.since is not None and version < self.since:
            return False
        if self.until is not None and version >= self.until:
            return False
        return self.when is None or bool(self.when(version))


@dataclass(frozen=True)
class Derived:
    """A value computed from a view of the struct (e.g. chunksize = size & ~7)."""

    name: str
    func: Callable
    doc: str = ""


@dataclass(frozen=True)
class Struct:
    name: str
    fields: tuple
    source: str = ""
    union: bool = False

    def __init__(self, name: str, fields, source: str = "", union: bool = False):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fields", tuple(fields))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "union", union)


@dataclass
class DescriptorSet:
    """The descriptors of one allocator module, by struct name (for Ref resolution)."""

    name: str
    structs: dict[str, Struct] = field(default_factory=dict)

    def add(self, *structs: Struct) -> DescriptorSet:
        for s in structs:
            self.structs[s.name] = s
        return self
