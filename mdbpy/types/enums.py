"""Enum values as mdb names them (mdb_print.c's enum printing), for ::print and ::enum.

An enum whose enumerators are all 0 or powers of two (and not all 0) is a set of flags: a value
prints as the names of its bits joined by `|`, the names' common prefix written once
(`F_{READ|EXEC}`), with any bits no enumerator names appended in hex. Any other enum prints the
one name that has the value, or `???`.
"""

from __future__ import annotations

from mdbpy.types.model import Enum

MASK64 = (1 << 64) - 1


def common_prefix(names: list[str]) -> str:
    """The prefix every name shares, never the whole of a name (a name equal to the prefix
    gives one character back, as mdb's enum_prefix_scan_cb does); '' when there is none."""
    prefix = None
    for name in names:
        if prefix is None:
            prefix = name
            continue
        n = 0
        while n < len(prefix) and n < len(name) and prefix[n] == name[n]:
            n += 1
        if n == len(prefix) == len(name) and n > 0:
            n -= 1
        prefix = prefix[:n]
        if not prefix:
            return ""
    return prefix or ""


def is_flags(e: Enum) -> bool:
    """Every value 0 or a power of two, and some bit named."""
    bits = 0
    for _, v in e.enumerators:
        if v and v & (v - 1):
            return False
        bits |= v
    return bits != 0


def hex_alt(v: int) -> str:
    """%#llx: 0x-prefixed hex, plain `0` for zero."""
    v &= MASK64
    return f"0x{v:x}" if v else "0"


def flags_text(e: Enum, value: int, all_prefix: bool = False) -> str | None:
    """`F_{READ|EXEC}|0x40` for a flags enum (None when e is not one). all_prefix (::enum -e)
    drops the common prefix from the first name too."""
    if not is_flags(e):
        return None
    names = [n for n, _ in e.enumerators]
    plen = len(common_prefix(names))
    out, buf = [], ""
    found = first = zero = False
    bits = 0
    for name, bit in e.enumerators:
        if (bit == 0 and zero) or (bit and bits & bit):
            continue
        if bit == 0:
            zero = True
        bits |= bit
        if not value & bit:
            continue
        if found:
            buf += "|"
            out.append(buf[:plen] + "{" + buf[plen:] if first and not all_prefix and plen
                       else buf)
        if (found or all_prefix) and len(name) > plen:
            name = name[plen:]
        buf, first, found = name, not found, True
    missed = value & ~bits & MASK64
    if found:  # close the brace opened after the prefix (mdb also closes one never opened)
        opened = not first and not all_prefix and plen
        out.append(buf + ("}" if opened else "") + ("|" if missed else ""))
    if not found or missed:
        out.append(hex_alt(missed))
    return "".join(out)


def value_label(e: Enum, value: int) -> str:
    """What ::print shows in parentheses after an enum's number."""
    text = flags_text(e, value)
    if text is None:
        text = e.name_of(value) or "???"
    return text
