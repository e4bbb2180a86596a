"""Member paths as ::print, ::offsetof and ::printf take them: `a.b[3].c`, `next->value`.

The first member needs no delimiter (`->` is assumed on a pointer, `.` otherwise, as in mdb's
parse_member). `[i]` indexes an array or what a pointer points at; the caller says how an index
reads (::print: mdb's numbers, in the current radix or with a 0x / 0t prefix). `->` and `[i]` on a pointer read the pointer from the
target, so a path on a type alone (::offsetof) may use only `.` and array indexing.
"""

from __future__ import annotations

import re

from mdbpy.errors import MdbError
from mdbpy.types.model import Array, Pointer
from mdbpy.types.value import Value

# a C identifier, or gcc's name for a C++ vtable pointer (`_vptr.Shape`: no C++ member name can
# hold a '.', so it cannot be read as a path)
NAME = re.compile(r"_vptr\.\w+|\w+")


def _int(text: str) -> int:
    return int(text, 0)


def parse(path: str, number=_int) -> list[tuple[str, object]]:
    """[('.', name) | ('->', name) | ('[]', index)], or a one-line error."""
    steps: list[tuple[str, object]] = []
    i = 0
    first = True
    while i < len(path):
        if path.startswith("->", i):
            delim, i = "->", i + 2
        elif path[i] == ".":
            delim, i = ".", i + 1
        elif path[i] == "[":
            end = path.find("]", i)
            if end < 0:
                raise MdbError(f"{path}: no trailing ']'")
            text = path[i + 1:end].strip()
            try:
                index = number(text)
            except (MdbError, ValueError):
                raise MdbError(f"{path}: '{text}' is not an index") from None
            steps.append(("[]", index))
            i = end + 1
            first = False
            continue
        elif first:
            delim = ""  # chosen by the type: -> on pointers, . otherwise
        else:
            raise MdbError(f"{path}: '{path[i]}' is not a valid delimiter")
        m = NAME.match(path, i)
        if m is None:
            raise MdbError(f"{path}: a member name must follow '{delim or path[i:i + 1]}'")
        steps.append((delim, m.group(0)))
        i = m.end()
        first = False
    if not steps:
        raise MdbError("empty member path")
    return steps


def follow(v: Value, path: str, number=_int, warn=None) -> tuple[Value, bool]:
    """The value the path reaches from v, and whether it ended in `[0]` on a pointer taken
    from a member (mdb then names the struct `p->` rather than `p[0].`)."""
    last_deref = False
    from_member = False
    for delim, arg in parse(path, number):
        t = v.kind_
        if delim == "[]":
            if isinstance(t, Pointer):
                v = v[arg]
                last_deref = arg == 0 and from_member
            elif isinstance(t, Array):
                if t.count is not None and arg >= t.count and warn is not None:
                    warn(f"index {arg} is outside of array bounds [0 .. {t.count - 1}]")
                v = v.element_(arg)
                last_deref = False
            else:
                raise MdbError("cannot index into non-array, non-pointer type")
            continue
        if delim == "":
            delim = "->" if isinstance(t, Pointer) else "."
        if delim == "->":
            if not isinstance(t, Pointer):
                raise MdbError(f"{v.type.spelled()} is not a pointer type")
            v = v.deref()
        v = v.field_(arg)
        from_member = True
        last_deref = False
    return v, last_deref


def offset_of(t, path: str, space, number=_int) -> tuple[int, Value]:
    """The bit offset of a member path in a type (no reads: `->` is refused) and the member's
    value shell, which knows its type and, for a bitfield, its width."""
    if "->" in path:
        raise MdbError(f"{path}: '->' leaves the type; ::offsetof takes '.' and '[i]'")
    probe = Value(space, t, 0)
    if isinstance(probe.kind_, Pointer):
        raise MdbError(f"{t.spelled()} is not a struct or union type")
    v, _ = follow(probe, path, number)
    bits = v.bit_field_[0] if v.bit_field_ is not None else 0
    return 8 * (v.address or 0) + bits, v
