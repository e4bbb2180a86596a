"""Output helpers shared by dcmds: mdb_printf's conventions (%p, %0?p, %#r, %H, %a, C escapes)
and tables."""

from __future__ import annotations

PTR_WIDTH = 16  # mdb's %? on LP64
_ESCAPES = {0: "\\0", 7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v",
            34: '\\"', 92: "\\\\"}


def ptr(v: int) -> str:
    """%p: hex, no prefix."""
    return f"{v:x}"


def ptr0(v: int) -> str:
    """%0?p: hex zero-padded to the pointer width."""
    return f"{v:0{PTR_WIDTH}x}"


def ptrpad(v: int) -> str:
    """%?p: hex space-padded to the pointer width."""
    return f"{v:>{PTR_WIDTH}x}"


def radix_str(v: int, radix: int = 16, prefix: bool = False) -> str:
    """%r / %#r: v in the output radix; with prefix, a base prefix when v > 9 (mdb's rule)."""
    v &= (1 << 64) - 1
    if radix == 16:
        s = f"{v:x}"
    elif radix == 10:
        s = str(v)
    elif radix == 8:
        s = f"{v:o}"
    elif radix == 2:
        s = f"{v:b}"
    else:
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"
        s, n = "", v
        while True:
            s = digits[n % radix] + s
            n //= radix
            if not n:
                break
    if prefix and v > 9:
        s = {16: "0x", 10: "0t", 8: "0o", 2: "0i"}.get(radix, "") + s
    return s


def symbolic(session, addr: int) -> str:
    """mdb's %a: symbol+offset, else the address with its 0x prefix (none at 9 or below)."""
    s = session.format_addr(addr)
    return str(addr) if s.startswith("0x") and addr <= 9 else s


def c_escape(data: bytes) -> str:
    """strchr2esc: C escapes for the specials, \\ooo for anything not printable ASCII."""
    out = []
    for b in data:
        if b in _ESCAPES:
            out.append(_ESCAPES[b])
        elif b == 32 or 33 <= b <= 126:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return "".join(out)


def human_size(v: int) -> str:
    """%H: plain below 1024; an exact multiple of a unit as `8K`; else 3 significant figures."""
    if v < 1024:
        return str(v)
    units = "KMGTPE"
    u, div = 0, 1024
    while u + 1 < len(units) and v >= div * 1024:
        u += 1
        div *= 1024
    if v % div == 0:
        return f"{v // div}{units[u]}"
    x = v / div
    if x >= 100:
        s = f"{x:.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + units[u]


def table_rule(width: int = 72) -> str:
    return "-" * width
