"""Which glibc the target runs, read from the libc's own release string.

Every glibc carries `GNU C Library (<vendor>) <stable|development> release version X.Y` in its
.rodata (what `libc.so.6` prints when run). File names lie (libc.so.6 is every release, and a
fixture run through another release's loader maps a file of any name), so the string decides:
read from the libc file when it is on this machine, else from the target's read-only mappings
of libc (a core from elsewhere).
"""

from __future__ import annotations

import re

from mdbpy.errors import MdbError
from mdbpy.symbols.embedded import GLIBC_SCAN, embedded, glibc_release as parse_release, in_file


def find_libc(session):
    """The load object of the target's C library, or None (a static binary, no libc)."""
    for o in session.symbols.objects():
        base = o.name.split("/")[-1]
        if base.startswith("libc.so") or re.match(r"libc-2\.\d+\.so$", base):
            return o
    return None


def release_of_file(path: str) -> tuple[int, int] | None:
    return in_file(path, parse_release, GLIBC_SCAN)


def glibc_version(session) -> tuple[int, int]:
    """(major, minor) of the target's glibc; MdbError when there is no recognisable libc."""
    cached = session.cache.get("ptmalloc.version")
    if cached is not None:
        return cached
    libc = find_libc(session)
    if libc is None:
        raise MdbError("ptmalloc: no C library is mapped in the target")
    ver = embedded(session.mem, libc, parse_release, GLIBC_SCAN)
    if ver is None:
        raise MdbError(f"ptmalloc: {libc.name} has no glibc release string")
    session.cache["ptmalloc.version"] = ver
    return ver
