"""Parsed symbol tables in columns, and their on-disk cache keyed by build-id.

Parsing libc's 10,000-symbol debug table (finding the debug file, checking its CRC, importing
pyelftools, decoding names) costs several times more than reading it back, so each ELF file's
parsed tables are written once to `$MDBPY_CACHE_DIR` (else `$XDG_CACHE_HOME/mdbpy/symbols`,
else `~/.cache/mdbpy/symbols`) as one `<build-id>.syms` file:

    b"MDBPYSYM" | u32 header length | JSON header | per table: value[u64] size[u64] info[u8]
    other[u8] shndx[u16] arrays, then the NUL-separated names blob

The arrays are read with the stdlib `array` module (no numpy import on this path) and never
with pickle, so a planted file can at worst be rejected. An entry whose magic, format version,
build-id or lengths do not check out is ignored and the caller parses the ELF file again;
failed writes are silent.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from array import array
from dataclasses import dataclass

MAGIC = b"MDBPYSYM"
FORMAT_VERSION = 1
# column name -> array typecode, in file order
COLUMNS = (("value", "Q"), ("size", "Q"), ("info", "B"), ("other", "B"), ("shndx", "H"))
MAX_ENTRY = 256 << 20  # a cache file larger than this is not ours


@dataclass
class Columns:
    """One ELF symbol table in file order: the raw ELF fields as arrays, names as a list."""

    names: list[str]
    value: array
    size: array
    info: array
    other: array
    shndx: array

    def __len__(self) -> int:
        return len(self.names)


def cache_dir() -> str:
    d = os.environ.get("MDBPY_CACHE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mdbpy", "symbols")


def entry_path(build_id: str, suffix: str = ".syms") -> str | None:
    """The cache file of build_id (`.syms`: symbol tables; mdbpy/types keeps `.types`)."""
    if not build_id or not all(c in "0123456789abcdef" for c in build_id):
        return None
    return os.path.join(cache_dir(), build_id + suffix)


def load(build_id: str) -> tuple[dict, dict[str, Columns]] | None:
    """(meta, tables by name) cached for build_id, or None when absent or invalid."""
    path = entry_path(build_id)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ENTRY + 1)
        return _decode(data, build_id)
    except Exception:  # absent, corrupt, truncated or foreign: parse the ELF file instead
        return None


def _decode(data: bytes, build_id: str) -> tuple[dict, dict[str, Columns]] | None:
    if len(data) > MAX_ENTRY or data[:8] != MAGIC:
        return None
    (hlen,) = struct.unpack_from("<I", data, 8)
    head = json.loads(data[12:12 + hlen].decode())
    if head.get("version") != FORMAT_VERSION or head.get("build_id") != build_id:
        return None
    pos = 12 + hlen
    tables = {}
    for which, count, blob_len in head["tables"]:
        cols = {}
        for name, code in COLUMNS:
            a = array(code)
            n = count * a.itemsize
            if pos + n > len(data):
                return None
            a.frombytes(data[pos:pos + n])
            if sys.byteorder != "little":
                a.byteswap()
            cols[name] = a
            pos += n
        blob = data[pos:pos + blob_len].decode("utf-8")
        pos += blob_len
        names = blob.split("\0") if count else []
        if len(names) != count:
            return None
        tables[which] = Columns(names, **cols)
    return (head.get("meta") or {}, tables) if pos == len(data) else None


def load_json(build_id: str, suffix: str, max_bytes: int):
    """The JSON value of build_id's entry with that suffix (the types layer keeps `.types`
    and `.layouts`), or None when absent, larger than max_bytes or not JSON; the caller
    checks its shape."""
    path = entry_path(build_id, suffix)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        return json.loads(raw) if len(raw) <= max_bytes else None
    except (OSError, ValueError):
        return None


def store_json(build_id: str, suffix: str, value) -> None:
    """Write build_id's entry with that suffix as compact JSON (atomically; failures are
    silent, as for every entry)."""
    path = entry_path(build_id, suffix)
    if path is not None:
        write_atomic(path, [json.dumps(value, separators=(",", ":")).encode()])


def store(build_id: str, meta: dict, tables: dict[str, Columns]) -> None:
    """Write the entry atomically (temp file + rename); failures leave no trace."""
    path = entry_path(build_id)
    if path is None:
        return
    body = []
    index = []
    for which, t in sorted(tables.items()):
        for name, code in COLUMNS:
            a = array(code, getattr(t, name))
            if sys.byteorder != "little":
                a.byteswap()
            body.append(a.tobytes())
        blob = "\0".join(t.names).encode("utf-8")
        body.append(blob)
        index.append([which, len(t), len(blob)])
    head = json.dumps({"version": FORMAT_VERSION, "build_id": build_id, "meta": meta,
                       "tables": index}).encode()
    write_atomic(path, [MAGIC + struct.pack("<I", len(head)) + head, *body])


def write_atomic(path: str, pieces, strict: bool = False) -> None:
    """Write the pieces as the file at path through a temp file and a rename, so a reader
    never sees half an entry; failures leave no trace, and are ignored (a cache entry is
    only an optimization) unless `strict` (a file the user asked for: the OSError is
    raised)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            for piece in pieces:
                f.write(piece)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if strict:
            raise
