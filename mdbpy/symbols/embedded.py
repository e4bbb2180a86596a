"""Strings a load object embeds in its read-only data: a library's release string, a path
its code names. Allocator modules tell releases and builds apart by them, because file names
lie (libc.so.6 is every glibc; a static Rust service holds a jemalloc under its own name).

The object's file is read when it is on this machine (a few large reads from the start);
otherwise (a core from elsewhere) the target's read-only mappings of the object are, block by
block, passing over pages that cannot be read. Consecutive blocks overlap by OVERLAP bytes so
that a string across a boundary is still found.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
READ_STEP = 1 << 20
OVERLAP = 256  # longer than any string searched for
# what every glibc's libc carries in its .rodata (what `libc.so.6` prints when run)
GLIBC_RELEASE = re.compile(rb"GNU C Library [^\n\0]{0,200}?release version (\d+)\.(\d+)")
GLIBC_SCAN = 8 << 20  # bytes of a libc file or mapping searched for it


def glibc_release(data: bytes) -> tuple[int, int] | None:
    """(major, minor) of the glibc release string in data, or None."""
    m = GLIBC_RELEASE.search(data)
    return (int(m.group(1)), int(m.group(2))) if m else None


def in_file(path: str, parse: Callable[[bytes], T | None], limit: int) -> T | None:
    """parse()'s first result over the first `limit` bytes of the file; None when it finds
    nothing there or the file cannot be read."""
    try:
        return search_file(path, parse, limit)
    except OSError:
        return None


def search_file(path: str, parse: Callable[[bytes], T | None], limit: int) -> T | None:
    """in_file(), raising OSError when the file cannot be read (for a caller that keeps the
    answer: a read that failed is no answer)."""
    with open(path, "rb") as f:
        return _first(((f.tell() - len(d), d) for d in iter(lambda: f.read(READ_STEP), b"")),
                      parse, limit)


def in_mappings(mem, obj, parse: Callable[[bytes], T | None], limit: int) -> T | None:
    """parse()'s first result over the target's readable, non-writable mappings of obj, up to
    `limit` bytes of each (AddressSpace.blocks passes over what cannot be read)."""
    for m in mem.mappings():
        if not (m.readable and not m.writable and obj.base <= m.start < obj.end):
            continue
        hit = _first(mem.blocks(m.start, m.end, READ_STEP), parse, limit)
        if hit is not None:
            return hit
    return None


def _first(pieces, parse: Callable[[bytes], T | None], limit: int) -> T | None:
    """parse()'s first result over (address, bytes) pieces, up to `limit` bytes; a piece is
    searched with the last OVERLAP bytes of the one before only where it starts at that one's
    end: bytes either side of a page that could not be read are never joined into a string."""
    tail, end, seen = b"", None, 0
    for addr, data in pieces:
        hit = parse((tail if addr == end else b"") + data)
        if hit is not None:
            return hit
        seen += len(data)
        if seen >= limit:
            return None
        tail, end = data[-OVERLAP:], addr + len(data)
    return None


def embedded(mem, obj, parse: Callable[[bytes], T | None], limit: int) -> T | None:
    """parse()'s first result in obj's file when it is on this machine (its answer is final:
    the mappings hold the same bytes, and searching them again would double the cost of
    every detection that finds nothing), else in the target's read-only mappings of obj."""
    path = getattr(obj, "file", None)
    if path:
        try:
            return search_file(path, parse, limit)
        except OSError:
            pass
    return in_mappings(mem, obj, parse, limit)
