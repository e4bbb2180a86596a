"""Binding descriptors to an ABI and a version, and reading memory through typed views.

bind() lays a descriptor out as a C compiler would (each field at the next multiple of its
alignment, the struct rounded up to its largest alignment, unions at offset 0), keeping only the
fields whose version predicates hold. With DWARF facts for the struct, DWARF's offsets win and the
origin says so: `::layout NAME` shows a user where every offset came from.

Walkers read fields through views only (`view.cache_name`, never `addr + 88`), and scan many
structs at once through the bound struct's numpy dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import MdbError
from mdbpy.layout.desc import Array, Derived, DescriptorSet, Field, Opaque, Prim, Ref, Struct


@dataclass(frozen=True)
class ABI:
    """Sizes that differ between targets: pointer/long width and the opaque libc types."""

    name: str
    pointer_size: int = 8
    long_size: int = 8
    opaque: tuple = (("pthread_mutex_t", 40, 8), ("pthread_cond_t", 48, 8))

    def opaque_size(self, name: str) -> tuple[int, int]:
        for n, size, align in self.opaque:
            if n == name:
                return size, align
        raise MdbError(f"ABI {self.name} does not define {name}")


X86_64 = ABI("x86_64")
AARCH64 = ABI("aarch64", opaque=(("pthread_mutex_t", 48, 8), ("pthread_cond_t", 48, 8)))


@dataclass(frozen=True)
class DwarfStruct:
    """A struct's layout as DWARF states it: total size and member -> (offset, size)."""

    size: int
    members: dict
    origin: str  # e.g. the file the DWARF came from


@dataclass
class BoundField:
    name: str
    offset: int
    size: int  # total bytes (for a flexible array: 0)
    ctype: str  # the C type as text, for ::layout
    kind: str  # 'int', 'ptr', 'char', 'float', 'struct', 'array', 'opaque'
    signed: bool = False
    elem_size: int = 0  # arrays: size of one element
    count: int | None = None  # arrays: element count (None: flexible)
    elem_kind: str = ""  # arrays: kind of the element
    sub: BoundStruct | None = None  # nested struct (or array of structs)
    origin: str = "builtin"


@dataclass
class BoundStruct:
    name: str
    size: int
    align: int
    fields: dict[str, BoundField]  # in declaration order
    derived: dict[str, Derived] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> field name
    source: str = ""
    origin: str = "builtin"  # 'builtin x86_64 v2.36' or 'DWARF <file>'
    # where DWARF's layout differs from the builtin descriptor's (DWARF wins; shown by
    # ::layout so a stale descriptor is seen, never silently used)
    differs: list[str] = field(default_factory=list)
    _dtype: object = None

    def field(self, name: str) -> BoundField:
        f = self.fields.get(self.aliases.get(name, name))
        if f is None:
            raise MdbError(f"struct {self.name} has no field '{name}' ({self.origin})")
        return f

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.fields

    def offset(self, name: str) -> int:
        return self.field(name).offset

    def view(self, mem, addr: int) -> View:
        """A view of the struct at addr (reads the struct's bytes once)."""
        return View(self, addr, mem.read(addr, self.size), mem)

    def from_bytes(self, data: bytes, addr: int = 0, mem=None) -> View:
        return View(self, addr, data, mem)

    def dtype(self):
        """A numpy structured dtype with this layout (fixed-size fields only), for decoding
        arrays of structs in one step."""
        if self._dtype is None:
            import numpy as np

            names, formats, offsets = [], [], []
            for f in self.fields.values():
                fmt = _np_format(f)
                if fmt is not None:
                    names.append(f.name)
                    formats.append(fmt)
                    offsets.append(f.offset)
            self._dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                                    "itemsize": self.size})
        return self._dtype


def _np_format(f: BoundField):
    if f.kind in ("int", "ptr", "char"):
        return f"<{'i' if f.signed and f.kind != 'ptr' else 'u'}{f.size}"
    if f.kind == "array" and f.count and f.elem_kind in ("int", "ptr", "char"):
        return (f"<{'i' if f.signed else 'u'}{f.elem_size}", (f.count,))
    if f.kind == "struct" and f.sub is not None:
        return f.sub.dtype()
    return None


class View:
    """Typed access to one struct instance: attributes are its fields (by name or alias) and
    its derived values. Integers decode as Python ints; char arrays as bytes; arrays of scalars
    as tuples; nested structs as views; flexible arrays through index()."""

    __slots__ = ("_s", "addr", "_data", "_mem")

    def __init__(self, s: BoundStruct, addr: int, data: bytes, mem=None):
        self._s = s
        self.addr = addr
        self._data = data
        self._mem = mem

    @property
    def struct(self) -> BoundStruct:
        return self._s

    def __getattr__(self, name: str):
        s = self._s
        real = s.aliases.get(name, name)
        f = s.fields.get(real)
        if f is None:
            d = s.derived.get(name)
            if d is not None:
                return d.func(self)
            raise AttributeError(f"struct {s.name} has no field '{name}' ({s.origin})")
        return self._decode(f)

    def _decode(self, f: BoundField):
        data = self._data
        o = f.offset
        if f.kind in ("int", "ptr", "char"):
            return int.from_bytes(data[o:o + f.size], "little", signed=f.signed)
        if f.kind == "struct":
            return View(f.sub, self.addr + o, data[o:o + f.size], self._mem)
        if f.kind == "array":
            if f.count is None:
                raise MdbError(f"{self._s.name}.{f.name} is a flexible array: use index()")
            if f.elem_kind == "char":
                return data[o:o + f.size]
            if f.sub is not None:
                return tuple(View(f.sub, self.addr + o + i * f.elem_size,
                                  data[o + i * f.elem_size:o + (i + 1) * f.elem_size], self._mem)
                             for i in range(f.count))
            es = f.elem_size
            return tuple(int.from_bytes(data[o + i * es:o + (i + 1) * es], "little",
                                        signed=f.signed) for i in range(f.count))
        return data[o:o + f.size]

    def cstr(self, name: str) -> str:
        """A char-array field as text, up to its first NUL."""
        raw = getattr(self, name)
        return raw.split(b"\0", 1)[0].decode("latin-1")

    def addr_of(self, name: str) -> int:
        return self.addr + self._s.field(name).offset

    def index(self, name: str, i: int):
        """Element i of an array field, reading past the struct for flexible arrays."""
        f = self._s.field(name)
        if f.kind != "array":
            raise MdbError(f"{self._s.name}.{name} is not an array")
        if f.count is not None and not 0 <= i < f.count:
            raise MdbError(f"{self._s.name}.{name}[{i}] is out of range")
        a = self.addr + f.offset + i * f.elem_size
        inside = f.count is not None or f.offset + (i + 1) * f.elem_size <= len(self._data)
        raw = (self._data[a - self.addr:a - self.addr + f.elem_size] if inside
               else self._mem.read(a, f.elem_size))
        if f.sub is not None:
            return View(f.sub, a, raw, self._mem)
        return int.from_bytes(raw, "little", signed=f.signed)

    def __repr__(self):
        return f"<{self._s.name} at 0x{self.addr:x}>"


# -- binding --------------------------------------------------------------------------------
def _align_up(v: int, a: int) -> int:
    return (v + a - 1) // a * a


class Binder:
    """Binds the structs of a DescriptorSet for one (ABI, version), caching each result."""

    def __init__(self, dset: DescriptorSet, abi: ABI = X86_64, version=None,
                 dwarf: dict[str, DwarfStruct] | None = None):
        self.dset = dset
        self.abi = abi
        self.version = version
        self.dwarf = dwarf or {}
        self._bound: dict[str, BoundStruct] = {}
        self._active: set[str] = set()

    def __getitem__(self, name: str) -> BoundStruct:
        b = self._bound.get(name)
        if b is None:
            desc = self.dset.structs.get(name)
            if desc is None:
                raise MdbError(f"no layout for struct {name} in {self.dset.name}")
            if name in self._active:
                raise MdbError(f"struct {name} contains itself")
            self._active.add(name)
            try:
                b = self._bind(desc)
            finally:
                self._active.discard(name)
            self._bound[name] = b
        return b

    def names(self) -> list[str]:
        return list(self.dset.structs)

    def _type_info(self, t) -> tuple[int, int, dict]:
        """(size, align, BoundField attributes) of a type."""
        abi = self.abi
        if isinstance(t, Prim):
            size = t.size or (abi.pointer_size if t.kind == "ptr" or t.name == "uintptr_t"
                              else abi.long_size)
            return size, size, {"ctype": t.name, "kind": t.kind, "signed": t.signed}
        if isinstance(t, Opaque):
            size, align = abi.opaque_size(t.name)
            return size, align, {"ctype": t.name, "kind": "opaque"}
        if isinstance(t, Ref):
            sub = self[t.name]
            return sub.size, sub.align, {"ctype": f"struct {t.name}", "kind": "struct",
                                         "sub": sub}
        if isinstance(t, Array):
            esize, ealign, einfo = self._type_info(t.elem)
            n = t.count
            return (esize * (n or 0), ealign,
                    {"ctype": f"{einfo['ctype']}[{'' if n is None else n}]", "kind": "array",
                     "signed": einfo.get("signed", False), "elem_size": esize, "count": n,
                     "elem_kind": einfo["kind"], "sub": einfo.get("sub")})
        raise MdbError(f"unknown type {t!r}")

    def _bind(self, desc: Struct) -> BoundStruct:
        fields: dict[str, BoundField] = {}
        aliases: dict[str, str] = {}
        derived: dict[str, Derived] = {}
        cur = 0
        max_align = 1
        end = 0
        for f in desc.fields:
            if isinstance(f, Derived):
                derived[f.name] = f
                continue
            if not isinstance(f, Field) or not f.present(self.version):
                continue
            if f.name in fields:
                raise MdbError(f"struct {desc.name}: field {f.name} present twice for "
                               f"version {self.version}")
            size, align, info = self._type_info(f.type)
            align = f.align or align
            off = 0 if desc.union else _align_up(cur, align)
            fields[f.name] = BoundField(f.name, off, size, **info)
            for a in f.aliases:
                aliases[a] = f.name
            cur = off + size
            end = max(end, cur)
            max_align = max(max_align, align)
        size = _align_up(end, max_align)
        ver = "" if self.version is None else " v" + ".".join(map(str, self.version))
        origin = f"builtin {self.abi.name}{ver}"
        dw = self.dwarf.get(desc.name)
        differs: list[str] = []
        if dw is not None:
            if dw.size != size:
                differs.append(f"size 0x{dw.size:x}, builtin 0x{size:x}")
            size, origin = self._apply_dwarf(desc.name, fields, aliases, dw, differs)
        return BoundStruct(desc.name, size, max_align, fields, derived, aliases, desc.source,
                           origin, differs)

    @staticmethod
    def _apply_dwarf(name, fields, aliases, dw: DwarfStruct, differs: list[str]):
        """DWARF's offsets replace the computed ones; a field DWARF lacks (under its name or
        an alias) is dropped, since the allocator in the target does not have it. Each
        difference from the builtin layout is noted in `differs`."""
        back = {}
        for a, real in aliases.items():
            back.setdefault(real, []).append(a)
        for fname in list(fields):
            f = fields[fname]
            for n in (fname, *back.get(fname, ())):
                if n in dw.members:
                    off, size = dw.members[n]
                    if off != f.offset:
                        differs.append(f"{fname} at 0x{off:x}, builtin 0x{f.offset:x}")
                    f.offset = off
                    if size is not None and f.kind != "array":
                        if size != f.size:
                            differs.append(f"{fname} of 0x{size:x} bytes, builtin 0x{f.size:x}")
                        f.size = size
                    f.origin = "dwarf"
                    break
            else:
                differs.append(f"{fname} is not in DWARF: dropped")
                del fields[fname]
        return dw.size, f"DWARF {dw.origin}"


def format_layout(b: BoundStruct) -> str:
    """The text of `::layout NAME`: one line per field with offset, size and type."""
    lines = [f"struct {b.name} (size 0x{b.size:x}, align {b.align}) from {b.origin}"]
    if b.source:
        lines.append(f"  source: {b.source}")
    lines.append(f"  {'OFFSET':>6s} {'SIZE':>6s}  {'TYPE':24s} NAME")
    for f in b.fields.values():
        alias = [a for a, r in b.aliases.items() if r == f.name]
        extra = f" (alias {', '.join(alias)})" if alias else ""
        size = "-" if f.count is None and f.kind == "array" else f"0x{f.size:x}"
        lines.append(f"  0x{f.offset:04x} {size:>6s}  {f.ctype:24s} {f.name}{extra}")
    for d in b.derived.values():
        lines.append(f"  {'':6s} {'':6s}  {'(derived)':24s} {d.name}"
                     + (f" = {d.doc}" if d.doc else ""))
    if b.differs:
        lines.append("  DWARF differs from the builtin descriptor (DWARF's layout is used):")
        lines += [f"    {d}" for d in b.differs]
    return "\n".join(lines)
