"""Scalars from the target's bytes: C strings read a page at a time and floating-point values
of every width the ABI has. Shared by typed values (value.py) and the printer (printer.py),
which sits below values: a Value prints itself through the printer."""

from __future__ import annotations

import math
import struct
from decimal import Decimal, localcontext

from mdbpy.errors import MdbError

MASK64 = (1 << 64) - 1


def read_string(mem, addr: int, limit: int) -> bytes:
    """Up to limit bytes of the C string at addr, read a page at a time so a string that ends
    near the end of a mapping is still read."""
    out = b""
    while len(out) < limit:
        n = min(limit - len(out), 4096 - ((addr + len(out)) & 4095))
        try:
            piece = mem.read(addr + len(out), n)
        except MdbError:
            if not out:
                raise
            break
        out += piece
        if b"\0" in piece:
            break
    return out


def decode_float(data: bytes):
    """A float, double or x87 long double (80 bits in 16 bytes) from little-endian bytes:
    a float, or a Decimal for long doubles, which a float cannot hold exactly."""
    if len(data) == 4:
        return struct.unpack("<f", data)[0]
    if len(data) == 8:
        return struct.unpack("<d", data)[0]
    if len(data) == 2:
        return struct.unpack("<e", data)[0]
    if len(data) >= 10:
        mant = int.from_bytes(data[:8], "little")
        se = int.from_bytes(data[8:10], "little")
        sign, exp = se >> 15, se & 0x7FFF
        if exp == 0x7FFF:
            if mant << 1 & MASK64:
                return math.nan
            return -math.inf if sign else math.inf
        with localcontext() as ctx:
            ctx.prec = 80
            v = Decimal(mant) * Decimal(2) ** (max(exp, 1) - 16383 - 63)  # denormals: exp 0
            return -v if sign else v
    raise MdbError(f"cannot decode a {len(data)}-byte floating-point value")
