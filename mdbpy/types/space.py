"""Type and global names resolved across the target's objects, as mdb resolves them.

A bare name is looked for in the main object first, then in the other objects in the order the
symbol table lists them (SymbolTable.lookup's order); ``obj`name`` looks in one object only. A
name may be spelled `struct x`, `union x`, `enum x` or `class x`; a bare name is a typedef or a
base type (`unsigned long` finds gcc's `long unsigned int`), or a C++ class, never a C tag (so
`g::print bits` is the member `bits` of g, even where a `struct bits` exists).
Trailing `*` and `[N]` make pointers and arrays of the named type.

Each object's DWARF (its own, or its separate debug file by build-id, .gnu_debuglink or
debuginfod, as mdbpy/symbols finds them) is opened once per process and shared by sessions:
what it holds depends only on the file.
"""

from __future__ import annotations

import re

from typing import TYPE_CHECKING

from mdbpy.errors import MdbError
from mdbpy.symbols.tls import thread_address
from mdbpy.types.model import (ATE_BOOLEAN, ATE_FLOAT, ATE_SIGNED, ATE_SIGNED_CHAR, ATE_UNSIGNED,
                               ATE_UNSIGNED_CHAR, Array, Base, Enum, Pointer, Struct, Type, Void)

TAGS = {"struct": "struct", "class": "struct", "union": "union", "enum": "enum"}
INT_WORDS = {"signed", "unsigned", "short", "long", "int", "char"}
# C's base types on LP64, for targets whose objects carry no DWARF (`::sizeof long`)
BUILTIN = {("char", ""): (1, ATE_SIGNED_CHAR), ("char", "signed"): (1, ATE_SIGNED_CHAR),
           ("char", "unsigned"): (1, ATE_UNSIGNED_CHAR), ("short", ""): (2, ATE_SIGNED),
           ("short", "unsigned"): (2, ATE_UNSIGNED), ("int", ""): (4, ATE_SIGNED),
           ("int", "unsigned"): (4, ATE_UNSIGNED), ("long", ""): (8, ATE_SIGNED),
           ("long", "unsigned"): (8, ATE_UNSIGNED), ("long long", ""): (8, ATE_SIGNED),
           ("long long", "unsigned"): (8, ATE_UNSIGNED), ("_Bool", ""): (1, ATE_BOOLEAN),
           ("float", ""): (4, ATE_FLOAT), ("double", ""): (8, ATE_FLOAT),
           ("long double", ""): (16, ATE_FLOAT)}
SUFFIX = re.compile(r"\s*(\*|\[\s*(\w*)\s*\])\s*$")

if TYPE_CHECKING:
    from mdbpy.types.dies import DwarfTypes

_files: dict[tuple[str, str | None], DwarfTypes] = {}


def canonical_base(name: str) -> tuple[str, str] | None:
    """C's integer spellings reduced to (size word, sign): `long unsigned int` and
    `unsigned long` are both ('long', 'unsigned'); None for other names. Plain `char` and
    `signed char` stay apart from each other only in C's rules, not in size or sign, so both
    are ('char', '') / ('char', 'signed')."""
    words = name.split()
    if not words or not set(words) <= INT_WORDS:
        return None
    sign = "unsigned" if "unsigned" in words else ""
    if "char" in words:
        return "char", sign or ("signed" if "signed" in words else "")
    longs = words.count("long")
    size = "short" if "short" in words else "long long" if longs == 2 else \
        "long" if longs == 1 else "int"
    return size, sign


def dwarf_file_of(obj) -> str | None:
    """The file holding obj's DWARF: the object itself when built with -g, else its
    separate debug file; None when neither has .debug_info."""
    from mdbpy.layout.dwarf import has_debug_info

    for path in (getattr(obj, "file", None), None):
        if path is None:
            find = getattr(obj, "find_debug_file", None)
            path = find() if find is not None else None
        if path and has_debug_info(path):
            return path
    return None


def open_dwarf(path: str, build_id: str | None, debug_dirs=()) -> DwarfTypes:
    """The process's DwarfTypes for a file (opened and indexed on first use); debug_dirs are
    where its supplementary file (dwz) is looked for by build-id, besides beside it."""
    from mdbpy.types.dies import DwarfTypes  # the DWARF readers load with the first type

    key = (path, build_id, tuple(debug_dirs))
    d = _files.get(key)
    if d is None:
        d = _files[key] = DwarfTypes(path, build_id, debug_dirs)
    return d


class TypeSpace:
    """One session's view of the types: its objects' DWARF in resolution order."""

    def __init__(self, session):
        self.session = session
        self._dwarf: dict[int, DwarfTypes | None] = {}  # id(object) -> its DWARF, or None
        self._complete: dict[tuple, Type | None] = {}

    @property
    def mem(self):
        return self.session.mem

    # -- objects ------------------------------------------------------------------------------
    def objects(self, obj: str | None = None):
        """(object, DwarfTypes) in resolution order, opening each object's DWARF only when the
        search reaches it; with obj, that object only (one-line error when unknown)."""
        syms = self.session.symbols
        if obj is not None:
            o = syms.object_named(obj)
            if o is None:
                raise MdbError(f"no object named '{obj}' (see ::objects)")
            order = [o]
        else:
            order = sorted(syms.objects(), key=lambda o: not o.is_exe)
        for o in order:
            d = self.dwarf_of(o)
            if d is not None:
                yield o, d

    def dwarf_of(self, o) -> DwarfTypes | None:
        if id(o) not in self._dwarf:
            d = None
            path = dwarf_file_of(o)
            if path is not None:
                info = getattr(o, "info", None)
                try:
                    d = open_dwarf(path, getattr(info, "build_id", None),
                                   getattr(o, "debug_dirs", None) or ())
                except Exception as e:  # unreadable or hostile DWARF: the object has no types
                    self.session.warn(f"{o.name}: cannot read the DWARF of {path}: "
                                      f"{type(e).__name__}: {e}")
                else:
                    if d.missing_sup:  # once per object and session
                        self.session.warn(f"{o.name}: {d.missing_sup}")
            self._dwarf[id(o)] = d
        return self._dwarf[id(o)]

    # -- types by name ------------------------------------------------------------------------
    def lookup(self, text: str) -> Type:
        """The type a name spells (see the module doc); a one-line error when none does."""
        t = self.find(text)
        if t is None:
            raise MdbError(f"failed to look up type {text.strip()}: no such type in the "
                           f"target's DWARF")
        return t

    def find(self, text: str) -> Type | None:
        text = " ".join(text.split())
        suffixes = []
        while True:
            m = SUFFIX.search(text)
            if m is None or m.start() == 0:
                break
            suffixes.append(m.group(1))
            text = text[:m.start()]
        words = text.split()
        if len(words) == 2 and words[0] in TAGS and "`" in words[1]:  # struct libc`foo
            obj, _, rest = words[1].rpartition("`")
            words = [words[0], rest]
        else:  # libc`struct foo, libc`size_t
            obj, _, name = text.rpartition("`")
            words = name.split()
        words = [w for w in words if w not in ("const", "volatile")]
        if not words:
            return None
        t = self._named(words, obj or None)
        for s in reversed(suffixes):
            if t is None:
                return None
            if s == "*":
                t = Pointer(t)
            else:
                t = Array(t, _length(s.strip("[] ")))
        return t

    def _named(self, words: list[str], obj: str | None) -> Type | None:
        tagged = words[0] in TAGS and len(words) == 2
        if tagged:
            kinds, name = [TAGS[words[0]]], words[1]
        else:  # C's ordinary identifiers; a C++ class too, where its name is a type name
            name = " ".join(words)
            kinds = ["typedef", "base", "struct", "union"]
        canon = canonical_base(name)
        for _, d in self.objects(obj):
            for kind in kinds:
                t = d.type_named(kind, name)
                if t is None and kind == "base" and canon is not None:
                    t = next((d.type_named("base", b) for b in d.index.names("base")
                              if canonical_base(b) == canon), None)
                if t is not None and (tagged or kind in ("typedef", "base") or t.cxx):
                    return t
        if canon is not None or name in ("_Bool", "float", "double", "long double", "void"):
            return _builtin(name, canon)
        return None

    def complete(self, t: Type) -> Type:
        """A struct or enum declared but not defined where it was used, replaced by the
        definition another object has (the first, in resolution order); else itself."""
        if not isinstance(t, (Struct, Enum)) or t.complete or not t.name:
            return t
        kind = "enum" if isinstance(t, Enum) else TAGS.get(t.tag, "struct")
        key = (kind, t.name)
        if key not in self._complete:
            self._complete[key] = next((found for _, d in self.objects()
                                        if (found := d.type_named(kind, t.name)) is not None),
                                       None)
        return self._complete[key] or t

    # -- globals ------------------------------------------------------------------------------
    def global_var(self, name: str) -> tuple[Type, int]:
        """(type, runtime address) of the global `name` (or ``obj`name``): the symbol table
        gives the address, the DWARF of the symbol's object the type. A `__thread` variable
        is the current thread's copy (its symbol's value is only an offset in a TLS block)."""
        obj, _, sym_name = name.rpartition("`")
        sym = self.session.symbols.lookup(sym_name, obj or None)
        if sym is not None and sym.addr and sym.type != "tls":
            hit = self.symbol_type(sym.addr)
            if hit is not None:
                return hit[0], sym.addr
        for o, d in self.objects(obj or None):
            found = d.var_named(sym_name)
            if found is not None and found[1] is not None:
                return found[0], (found[1] + o.bias) & ((1 << 64) - 1)
            tls = d.thread_local(sym_name) if found is not None else None
            if tls is not None:
                return tls[0], thread_address(self.session, o, tls[1], name)
        if sym is None:
            raise MdbError(f"failed to lookup symbol {name}")
        raise MdbError(f"no type data available for {name}")

    def symbol_type(self, addr: int) -> tuple[Type, str] | None:
        """(type, symbol name) of the global whose symbol starts exactly at addr, or of the
        current thread's copy of the `__thread` variable there."""
        o, sym = self.session.symbols.locate(addr)
        if sym is None or sym.addr != addr or o is None:
            return self._thread_local_at(addr)
        d = self.dwarf_of(o)
        if d is None:
            return None
        t = d.var_at(sym.value) if sym.value else None
        if t is None:
            found = d.var_named(sym.name.split("@", 1)[0])
            t = found[0] if found is not None else None
        return None if t is None else (t, sym.name)

    def _thread_local_at(self, addr: int) -> tuple[Type, str] | None:
        """(type, name) of the thread-local variable whose current thread's copy starts at
        addr, or None."""
        from mdbpy.symbols.tls import thread_block

        # the Session's selected thread; a Program alone (the API, an allocator binding its
        # structs) selects none, and means the first thread, as a Session without a selection
        select = getattr(self.session, "current_thread", None)
        threads = None if select else self.session.target.threads()
        th = select() if select else threads[0] if threads else None
        if th is None:
            return None
        for o, d in self.objects():
            if not d.index.tls_keys:
                continue
            block = thread_block(self.session, o, th)
            hit = d.thread_local_at(addr - block) if block is not None else None
            if hit is not None:
                return hit
        return None

    def static_member(self, qualname: str) -> tuple[Type, int] | None:
        """A C++ static member's definition (type, address), if some object defines it."""
        for o, d in self.objects():
            found = d.var_named(qualname)
            if found is not None and found[1] is not None:
                return found[0], (found[1] + o.bias) & ((1 << 64) - 1)
        return None


def _length(text: str) -> int | None:
    """An array length as C writes it (decimal, or 0x hex); None for `[]`."""
    if not text:
        return None
    try:
        return int(text[2:], 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise MdbError(f"'{text}' is not an array length") from None


def _builtin(name: str, canon) -> Type:
    if name == "void":
        return Void()
    key = canon if canon is not None else (name, "")
    size, ate = BUILTIN[key]
    return Base(name, size, ate)


def space_of(session) -> TypeSpace:
    """The session's TypeSpace (kept in the session cache: rebuilding it is cheap, the DWARF
    behind it is shared by the process)."""
    s = session.cache.get("types.space")
    if s is None:
        s = session.cache["types.space"] = TypeSpace(session)
    elif hasattr(session, "current_thread"):
        s.session = session  # made for the Program (an allocator's binding): the Session knows
        # which thread is selected, and reads everything else through to the same Program
    return s
