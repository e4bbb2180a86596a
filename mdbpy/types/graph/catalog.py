"""The types the typegraph assigns, each reduced to what propagation needs.

A heap buffer's type is decided by comparing evidence, so each type gets a canonical name
(typedefs and qualifiers looked through: `const node_t *` and `struct node *` are one type; the
same struct defined again in every compilation unit is one type, by spelling and size) and a
number. For each type the catalog computes once:

- its *plan*: the byte offsets of the pointer words that are evidence, and the type each points
  to. Struct members, nested structs and array elements are flattened into it. A pointer gives
  no evidence when what it points to says nothing about a buffer's layout (`void *`, `char *`,
  `unsigned char *`, a function, an incomplete struct); a union's word is evidence only when
  every member of the union puts the same pointer type there (members that disagree, or a
  pointer overlaid on an integer, give none);
- what lies at its offset 0 (`at0`: its first member, recursively, and C++ base classes), so
  that a `struct list_head *` and a `struct conn *` to the same buffer agree when a conn starts
  with its list_head, and the buffer is the conn;
- whether it is polymorphic (holds a C++ vtable pointer): only the vtable can say what such an
  object is, its static type is not its dynamic type;
- a trailing flexible array, whose elements extend to the end of the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.types.model import Array, Base, Enum, Function, Pointer, Qualified, Struct, Type, \
    Typedef, Void

MAX_SLOTS = 1 << 18  # a type's plan stops growing here (huge arrays of pointers)
CATALOG_KEY = ("types", "catalog")


def canonical(t: Type) -> Type:
    """t without qualifiers and typedefs, except a typedef naming an anonymous struct, union
    or enum (its only name)."""
    for _ in range(64):
        if isinstance(t, Qualified):
            t = t.target
        elif isinstance(t, Typedef):
            inner = t.target.strip()
            if isinstance(inner, (Struct, Enum)) and not inner.name:
                return t
            t = t.target
        else:
            break
    return t


def spell(t: Type) -> str:
    """The canonical C spelling of a type: `struct node`, `struct bucket *`, `long int [4]`."""
    t = canonical(t)
    if isinstance(t, Pointer):
        inner = spell(t.target)
        return f"{inner} *" if not inner.endswith("*") else f"{inner}*"
    if isinstance(t, Array):
        return f"{spell(t.element)} [{'' if t.count is None else t.count}]"
    if isinstance(t, Function):
        return "<function>"
    if isinstance(t, Typedef):
        return t.name or "?"
    return t.spelled()


@dataclass
class TypeInfo:
    """One type as the typegraph uses it; `tid` is its number in the catalog."""

    tid: int
    name: str
    type: Type  # canonical
    size: int
    plan: dict[int, int] | None = None  # byte offset -> pointee tid (Catalog.plan_of)
    at0: frozenset = frozenset()  # tids found at offset 0, recursively
    poly: bool = False
    flex: tuple[int, int, dict] | None = None  # (offset, element size, element plan)


class Catalog:
    """Every type met while building one typegraph, numbered in order of first use."""

    def __init__(self, space):
        self.space = space
        self.infos: list[TypeInfo] = []
        self._by_key: dict[tuple[str, int], int] = {}
        self._evidence: dict[int, tuple] = {}  # id(pointer) -> (pointer, tid or None)
        self._has_at: dict[tuple[int, int, int], bool] = {}
        self._memo: dict = {}

    @classmethod
    def of(cls, space) -> Catalog:
        """The catalog of a session's types, kept in the session cache beside the space (and
        dropped with it when the target changes): a type's plan comes from the DWARF alone,
        so a graph built again (::typegraph -f, a new heap) reuses every plan, and every
        object's typed variables' words (memo), instead of cataloguing them again."""
        cache = space.session.cache
        cat = cache.get(CATALOG_KEY)
        if cat is None or cat.space is not space:
            cat = cache[CATALOG_KEY] = cls(space)
        return cat

    def memo(self, key, owner, compute):
        """compute()'s answer, kept under key while owner (whose id is in key) lives: for what
        depends on types alone, such as an object's typed variables' evidence words."""
        hit = self._memo.get(key)
        if hit is None or hit[0] is not owner:
            hit = self._memo[key] = (owner, compute())
        return hit[1]

    def __getitem__(self, tid: int) -> TypeInfo:
        return self.infos[tid]

    def complete(self, t: Type) -> Type:
        s = t.strip()
        return self.space.complete(s) if isinstance(s, (Struct, Enum)) else s

    def tid_of(self, t: Type) -> int | None:
        """The number of type t (added with its plan when new); None for a type without a
        size, which can be no buffer's type."""
        c = canonical(t)
        s = self.complete(c)
        size = s.size
        if not size or size <= 0 or (isinstance(s, Struct) and not s.complete):
            return None
        key = (spell(c if isinstance(c, Typedef) else s), size)
        tid = self._by_key.get(key)
        if tid is not None:
            return tid
        tid = self._by_key[key] = len(self.infos)
        info = TypeInfo(tid, key[0], s, size)
        self.infos.append(info)
        info.at0 = frozenset(self._at0(s, 0))
        info.poly = self._poly(s, 0)
        return tid

    def plan_of(self, tid: int) -> TypeInfo:
        """The type with its plan and flexible array computed (on first use: a type's
        pointers reach other types, and cataloguing them all eagerly would walk everything a
        library's structs reach)."""
        info = self.infos[tid]
        if info.plan is None:
            info.plan = self.plan(info.type)
            info.flex = self._flex(info.type)
        return info

    # -- evidence -------------------------------------------------------------------------------
    def pointee(self, p: Pointer) -> int | None:
        """The tid a pointer of type p is evidence of, or None (void, char, functions,
        incomplete types)."""
        key = id(p)
        hit = self._evidence.get(key)
        if hit is not None and hit[0] is p:
            return hit[1]
        target = self.complete(p.target)
        tid = None
        if not (isinstance(target, (Void, Function))
                or isinstance(target, Base) and target.is_char
                or isinstance(target, Array) and isinstance(target.element.strip(), Base)
                and target.element.strip().is_char):
            tid = self.tid_of(p.target)
        self._evidence[key] = (p, tid)  # p kept: its id must not be reused meanwhile
        return tid

    def plan(self, t: Type) -> dict[int, int]:
        out: dict[int, int] = {}
        self._flatten(t, 0, out)
        return out

    def _flatten(self, t: Type, off: int, out: dict, depth: int = 0) -> None:
        """Add to out the evidence words of a t at byte offset off."""
        if len(out) >= MAX_SLOTS or depth > 32:
            return
        t = self.complete(t)
        if isinstance(t, Pointer):
            if off % 8 == 0 and t.size == 8:
                tid = self.pointee(t)
                if tid is not None:
                    out[off] = tid
        elif isinstance(t, Array):
            if not t.count:
                return
            es = self.complete(t.element).size or 0
            sub: dict[int, int] = {}
            self._flatten(t.element, 0, sub, depth + 1)
            if not sub or es <= 0:
                return
            for i in range(min(t.count, MAX_SLOTS // len(sub) + 1)):
                for k, v in sub.items():
                    out[off + i * es + k] = v
        elif isinstance(t, Struct) and t.complete:
            if t.is_union:
                maps = []
                for m in t.members:
                    sub = {}
                    if m.offset is not None and not m.is_bitfield:
                        self._flatten(m.type, 0, sub, depth + 1)
                    maps.append(sub)
                if maps:
                    agreed = {k: v for k, v in maps[0].items()
                              if all(mm.get(k) == v for mm in maps[1:])}
                    for k, v in agreed.items():
                        out[off + k] = v
                return
            for m in t.members:
                if m.offset is None or m.is_bitfield:
                    continue
                self._flatten(m.type, off + m.offset, out, depth + 1)

    def _at0(self, t: Type, depth: int) -> set[int]:
        """The tids of the types that start at offset 0 of t, recursively."""
        t = self.complete(t)
        found: set[int] = set()
        if depth > 16:
            return found
        inner: list[Type] = []
        if isinstance(t, Struct) and t.complete:
            inner = [m.type for m in t.members if m.offset == 0 and not m.is_bitfield]
        elif isinstance(t, Array) and t.count:
            inner = [t.element]
        for it in inner:
            tid = self.tid_of(it)
            if tid is not None:
                found.add(tid)
                found |= self.infos[tid].at0
        return found

    def _poly(self, t: Type, depth: int) -> bool:
        """A C++ class with a vtable pointer at its start (its own or its first base's)."""
        t = self.complete(t)
        if not isinstance(t, Struct) or not t.complete or depth > 16:
            return False
        for m in t.members:
            if m.offset == 0 and ((m.name or "").startswith("_vptr") or
                                  (m.base and self._poly(m.type, depth + 1))):
                return True
        return False

    def _flex(self, t: Type):
        """(offset, element size, element plan) of a struct's trailing flexible array whose
        elements hold evidence; else None."""
        found = trailing_array(t)
        if found is None:
            return None
        off, element = found
        es = self.complete(element).size or 0
        sub = self.plan(element)
        return (off, es, sub) if es > 0 and sub else None

    # -- consistency ------------------------------------------------------------------------------
    def has_at(self, tid: int, off: int, want: int) -> bool:
        """Does a value of type tid hold a value of type want at byte offset off (an interior
        pointer's evidence is consistent with the buffer's type)?"""
        key = (tid, off, want)
        hit = self._has_at.get(key)
        if hit is None:
            hit = self._has_at[key] = self._has(self.infos[tid].type, off, want, 0)
        return hit

    def holds(self, t: Type, off: int, want: int) -> bool:
        """has_at judged on t's own layout rather than on its tid's: two definitions of one
        spelling and size (two objects', two units') are one tid, catalogued from the first."""
        tid = self.tid_of(t)
        if tid is not None and self.complete(canonical(t)) is self.infos[tid].type:
            return self.has_at(tid, off, want)
        return self._has(t, off, want, 0)

    def layout(self, t: Type) -> tuple:
        """What the typegraph makes of a type's layout (its plan, flexible array and what
        starts it), to tell apart two definitions that share a tid."""
        s = self.complete(canonical(t))
        return self.plan(s), self._flex(s), frozenset(self._at0(s, 0)), self._poly(s, 0)

    def _has(self, t: Type, off: int, want: int, depth: int) -> bool:
        t = self.complete(t)
        if off == 0:
            tid = self.tid_of(t)
            if tid is not None and (tid == want or want in self.infos[tid].at0):
                return True
        if depth > 32:
            return False
        if isinstance(t, Array) and t.count:
            es = self.complete(t.element).size or 0
            return es > 0 and off < es * t.count and self._has(t.element, off % es, want,
                                                                 depth + 1)
        if isinstance(t, Struct) and t.complete:
            for m in t.members:
                if m.offset is None or m.is_bitfield:
                    continue
                ms = self.complete(m.type).size or 0
                if m.offset <= off < m.offset + ms and self._has(m.type, off - m.offset, want,
                                                                 depth + 1):
                    return True
        return False

    def member_path(self, tid: int, off: int) -> str:
        """The member of type tid at byte offset off, as a C path (`next`, `name[3]`,
        `hdr.len`); '' at a scalar's own offset, None-like '<padding>' between members."""
        return _path(self, self.infos[tid].type, off, 0)


def trailing_array(t: Type) -> tuple[int, Type] | None:
    """(offset, element type) of a struct's trailing flexible array (`T items[]`), or None."""
    return t.trailing_array() if isinstance(t, Struct) else None


def _path(cat: Catalog, t: Type, off: int, depth: int) -> str:
    t = cat.complete(t)
    if depth > 32:
        return ""
    if isinstance(t, Array) and t.count:
        es = cat.complete(t.element).size or 0
        if es <= 0:
            return ""
        return f"[{off // es}]" + _join(_path(cat, t.element, off % es, depth + 1))
    if isinstance(t, Struct) and t.complete:
        for m in t.members:
            if m.offset is None:
                continue
            ms = cat.complete(m.type).size or 0
            if m.is_bitfield:
                lo, hi = m.bit_position // 8, (m.bit_position + m.bit_size + 7) // 8
                if lo <= off < hi:
                    return m.name or "?"
                continue
            if m.offset <= off < m.offset + ms:
                inner = _path(cat, m.type, off - m.offset, depth + 1)
                name = m.name
                if name is None:  # an anonymous member: its members are the struct's own
                    return inner.lstrip(".")
                return name + _join(inner)
        return "<padding>"
    return ""


def _join(inner: str) -> str:
    return "" if not inner else inner if inner.startswith("[") else "." + inner
