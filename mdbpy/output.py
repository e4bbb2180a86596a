"""Output helpers shared by dcmds: mdb_printf's conventions (%p, %0?p, %#r, %H) and tables."""

from __future__ import annotations

PTR_WIDTH = 16  # mdb's %? on LP64


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
