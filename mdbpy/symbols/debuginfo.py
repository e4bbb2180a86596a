"""Finding an object's separate debug file, the way gdb does.

Distributions strip their libraries and ship the symbol tables separately (Debian's libc6-dbg,
`objcopy --only-keep-debug`). Such a file is found first by build-id, under each debug directory
as `.build-id/ab/cdef....debug`, then by the object's `.gnu_debuglink` name next to the object,
in its `.debug/` subdirectory, and under each debug directory plus the object's directory. A
build-id hit must carry the same build-id; a debuglink hit must match the link's CRC32, so a
stale debug file from another build is never used.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable

SYSTEM_DEBUG_DIRS = ("/usr/lib/debug",)
# colon-separated directories replacing SYSTEM_DEBUG_DIRS (empty: none, to see a target as a
# machine without debug packages sees it)
SYSTEM_DEBUG_ENV = "MDBPY_SYSTEM_DEBUG_DIRS"
CRC_CHUNK = 1 << 20


def debug_dirs(user_dirs: Iterable[str] | None, sysroot: str | None) -> list[str]:
    """The directories searched, in order: the user's, then the system's (under the sysroot
    first when the target comes from another machine)."""
    out: list[str] = []
    for d in list(user_dirs or []):
        out.append(d)
    env = os.environ.get(SYSTEM_DEBUG_ENV)
    system = SYSTEM_DEBUG_DIRS if env is None else [d for d in env.split(":") if d]
    for d in system:
        if sysroot:
            out.append(os.path.join(sysroot, d.lstrip("/")))
        out.append(d)
    seen = set()
    return [d for d in out if not (d in seen or seen.add(d))]


def by_build_id(build_id: str, dirs: Iterable[str],
                build_id_of: Callable[[str], str | None]) -> str | None:
    """The first `<dir>/.build-id/ab/cdef....debug` whose own build-id is `build_id`."""
    if len(build_id) < 4:
        return None
    rel = os.path.join(".build-id", build_id[:2], build_id[2:] + ".debug")
    for d in dirs:
        p = os.path.join(d, rel)
        if os.path.isfile(p) and build_id_of(p) == build_id:
            return p
    return None


def by_debuglink(obj_path: str, link: str, crc: int, dirs: Iterable[str]) -> str | None:
    """The first file named by the debuglink, in gdb's places, whose CRC32 matches."""
    if not link or "/" in link:
        return None
    objdirs = []
    for p in (obj_path, os.path.realpath(obj_path)):
        d = os.path.dirname(p)
        if d not in objdirs:
            objdirs.append(d)
    candidates = []
    for od in objdirs:
        candidates += [os.path.join(od, link), os.path.join(od, ".debug", link)]
    for d in dirs:
        candidates += [os.path.join(d, od.lstrip("/"), link) for od in objdirs]
        candidates.append(os.path.join(d, link))
    for p in candidates:
        if not os.path.isfile(p) or _same_file(p, obj_path):
            continue
        if file_crc32(p) == crc:
            return p
    return None


def parse_debuglink(data: bytes) -> tuple[str, int] | None:
    """(file name, CRC32) from a .gnu_debuglink section: the name, NUL, padding to 4, CRC."""
    nul = data.find(b"\0")
    if nul <= 0:
        return None
    crc_at = (nul + 4) & ~3
    if crc_at + 4 > len(data):
        return None
    return data[:nul].decode("utf-8", "replace"), struct.unpack_from("<I", data, crc_at)[0]


def file_crc32(path: str) -> int | None:
    """The CRC32 (zlib's polynomial, as .gnu_debuglink uses) of the whole file."""
    crc = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
    except OSError:
        return None
    return crc


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
