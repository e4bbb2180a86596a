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

from mdbpy.target import elfcore as ec

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


# -- supplementary files (dwz) -----------------------------------------------------------------
# `dwz -m common.debug a b` moves what several debug files share into one file, and each then
# names it in .gnu_debugaltlink: the file name, NUL, and that file's build-id (DWARF 5's
# .debug_sup says the same: version, is-supplementary flag, name, then a checksum that dwz
# makes the build-id). Debian's -dbgsym packages name /usr/lib/debug/.dwz/<triplet>/<pkg>.debug.

def parse_altlink(data: bytes) -> tuple[str, str] | None:
    """(file name, build-id in hex) from a .gnu_debugaltlink section."""
    nul = data.find(b"\0")
    if nul <= 0:
        return None
    return data[:nul].decode("utf-8", "replace"), data[nul + 1:].hex()


def parse_debug_sup(data: bytes) -> tuple[str, str] | None:
    """(file name, checksum in hex) from the .debug_sup section of a file that refers to a
    supplementary file (None in the supplementary file itself, or when malformed)."""
    fields = _debug_sup(data)
    if fields is None or fields[0] or not fields[1]:
        return None
    return fields[1], fields[2]


def _debug_sup(data: bytes) -> tuple[bool, str, str] | None:
    """(is the supplementary file, file name, checksum in hex) of a .debug_sup section:
    version (2 bytes), flag, NUL-terminated name, ULEB128 length, checksum."""
    if len(data) < 5 or data[2] not in (0, 1):
        return None
    nul = data.find(b"\0", 3)
    if nul < 0:
        return None
    n, shift, pos = 0, 0, nul + 1
    while pos < len(data):
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    return bool(data[2]), data[3:nul].decode("utf-8", "replace"), data[pos:pos + n].hex()


def find_supplementary(debug_path: str, name: str, build_id: str, dirs: Iterable[str],
                       ids_of: Callable[[str], set[str]] | None = None) -> str | None:
    """The supplementary file a debug file's link names, as gdb looks for it: the name itself
    (a relative name from the debug file's directory, also after resolving symbolic links),
    then by its build-id under each debug directory (`.build-id/ab/cdef....debug`), then an
    absolute name under each debug directory (a sysroot's). Each hit must carry the link's
    build-id (when the link gives one; for .debug_sup, the checksum): a stale common file of
    another build is never used."""
    dirs = list(dirs)
    ids_of = ids_of or supplementary_ids
    candidates = []
    if os.path.isabs(name):
        candidates.append(name)
    else:
        for p in (debug_path, os.path.realpath(debug_path)):
            c = os.path.join(os.path.dirname(p), name)
            if c not in candidates:
                candidates.append(c)

    def carries_id(p: str) -> bool:
        return not build_id or build_id in ids_of(p)

    for p in candidates:
        if os.path.isfile(p) and carries_id(p):
            return p
    found = by_build_id(build_id, dirs, lambda p: build_id if carries_id(p) else None)
    if found is not None or not os.path.isabs(name):
        return found
    return next((p for p in (os.path.join(d, name.lstrip("/")) for d in dirs)
                 if os.path.isfile(p) and carries_id(p)), None)


def supplementary_ids(path: str) -> set[str]:
    """What identifies a supplementary file, in hex: its GNU build-id note (read from its
    section headers: a file written by dwz has no program headers, so no PT_NOTE), and the
    checksum its own .debug_sup gives (DWARF 5: the one the files referring to it repeat)."""
    out = set()
    try:
        with open(path, "rb") as f:
            def read_at(off: int, n: int) -> bytes:
                f.seek(off)
                return f.read(n)

            for name, kind, off, size in ec.section_headers(read_at):
                if size > 1 << 16 or not (kind == ec.SHT_NOTE or name == b".debug_sup"):
                    continue
                if kind == ec.SHT_NOTE:
                    bid = ec.build_id_note(read_at(off, size))
                    if bid:
                        out.add(bid.hex())
                else:  # the supplementary file's own .debug_sup
                    fields = _debug_sup(read_at(off, size))
                    if fields is not None and fields[0] and fields[2]:
                        out.add(fields[2])
    except (OSError, OverflowError, struct.error, IndexError):
        pass
    return out


# -- debuginfod ---------------------------------------------------------------------------------
# Debug files fetched by build-id from the servers of $DEBUGINFOD_URLS (as gdb and elfutils do)
# live in elfutils' cache, so one download serves every tool: <cache>/<build-id>/debuginfo.
URLS_ENV = "DEBUGINFOD_URLS"
TIMEOUT_ENV = "DEBUGINFOD_TIMEOUT"  # seconds without progress before giving up
MAXSIZE_ENV = "DEBUGINFOD_MAXSIZE"  # bytes: a larger file is refused
DEFAULT_TIMEOUT = 90  # elfutils' default
DEFAULT_MAXSIZE = 4 << 30  # no debug file is larger; a server sending more is not believed
FETCH_BLOCK = 1 << 20


def debuginfod_cache_dir() -> str:
    """elfutils' cache: $DEBUGINFOD_CACHE_PATH, else the legacy ~/.debuginfod_client_cache
    when it exists, else $XDG_CACHE_HOME/debuginfod_client, else
    ~/.cache/debuginfod_client (an empty variable counts as unset)."""
    d = os.environ.get("DEBUGINFOD_CACHE_PATH")
    if d:
        return d
    home = os.path.expanduser("~")
    legacy = os.path.join(home, ".debuginfod_client_cache")
    if os.path.isdir(legacy):
        return legacy
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg, "debuginfod_client") if xdg else \
        os.path.join(home, ".cache", "debuginfod_client")


def _env_number(name: str, default: int) -> int:
    try:
        n = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return n if n > 0 else default


def _size_text(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{-(-n // 1024)} KiB"


class Unreachable(Exception):
    """A debuginfod server that does not answer (offline, refused, timed out)."""


class Debuginfod:
    """One session's debuginfod client: the cache, the servers of $DEBUGINFOD_URLS (http and
    https; others, such as elfutils' ima: policies, are skipped) and what it learned. Each
    build-id is looked up once per session; a server that cannot be reached (offline, refused,
    timed out) is said once and not asked again; the first build-id the servers lack is said,
    the others not (every stripped object of a process is looked up, and one line is enough
    to know the servers lack some). The messages go to `err` as mdbpy's warnings do, with a
    progress line while a file arrives."""

    def __init__(self, err, urls: str | None = None):
        self.err = err
        urls = os.environ.get(URLS_ENV, "") if urls is None else urls
        self.servers = [u.rstrip("/") for u in urls.split()
                        if u.startswith(("http://", "https://"))]
        self.timeout = _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT)
        self.maxsize = _env_number(MAXSIZE_ENV, DEFAULT_MAXSIZE)
        self.dead: set[str] = set()
        self.known: dict[str, str | None] = {}  # build-id -> file, or None: not to be had
        self.missed = False  # a build-id the servers lack was said (once per session)

    def _say(self, msg: str, end: str = "\n") -> None:
        self.err.write(f"mdbpy: debuginfod: {msg}{end}")
        self.err.flush()

    def find(self, build_id: str, what: str,
             build_id_of: Callable[[str], str | None]) -> str | None:
        """The debug file of the object `what` (a name for messages) whose build-id is
        build_id: from the cache, else downloaded into it; None when neither has it."""
        if build_id in self.known:
            return self.known[build_id]
        if len(build_id) < 4 or not all(c in "0123456789abcdef" for c in build_id):
            return None
        path = os.path.join(debuginfod_cache_dir(), build_id, "debuginfo")
        got = path if os.path.isfile(path) and build_id_of(path) == build_id else None
        if got is None and self.servers:
            got = self._fetch(build_id, what, path, build_id_of)
        self.known[build_id] = got
        return got

    def _fetch(self, build_id: str, what: str, path: str, build_id_of) -> str | None:
        why = []
        for server in self.servers:
            if server in self.dead:
                continue
            url = f"{server}/buildid/{build_id}/debuginfo"
            try:
                fault = self._download(url, what, path, build_id, build_id_of)
            except Unreachable as e:
                self.dead.add(server)
                self._say(f"{server} is unreachable ({e}); it is not asked again")
                continue
            if fault is None:
                return path
            why.append(f"{server}: {fault}")
        if why and not self.missed:
            self.missed = True
            self._say(f"no debug file for {what} (build-id {build_id}): {'; '.join(why)}; "
                      "going on without it (other objects the servers lack are not named)")
        return None

    def _download(self, url: str, what: str, path: str, build_id: str,
                  build_id_of) -> str | None:
        """Fetch url into path atomically (a temporary file in the same directory, renamed
        once it is complete and carries build_id); None on success, else why not. Raises
        Unreachable when the server does not answer at all."""
        import http.client
        import tempfile
        import urllib.error
        import urllib.request

        req = urllib.request.Request(url, headers={"User-Agent": "mdbpy"})
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise Unreachable(f"no answer in {self.timeout} s") from None
            raise Unreachable(getattr(reason, "strerror", None) or str(reason)) from None
        with resp:
            try:
                size = int(resp.headers.get("Content-Length") or -1)
            except ValueError:
                size = -1
            if size > self.maxsize:
                return f"the file is {size} bytes, more than {self.maxsize}"
            shown = f" ({_size_text(size)})" if size >= 0 else ""
            tty = hasattr(self.err, "isatty") and self.err.isatty()
            self._say(f"downloading the debug file of {what}{shown} from {url}",
                      "" if tty else "\n")
            d = os.path.dirname(path)
            try:
                os.makedirs(d, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".debuginfo.", dir=d)
            except OSError as e:
                if tty:
                    self.err.write("\n")
                return f"cannot write the cache {d}: {e.strerror}"
            try:
                fault = self._receive(resp, fd, size, tty)
                if fault is None and build_id_of(tmp) != build_id:
                    fault = "the file sent is not its debug file (another build-id)"
                if fault is None:
                    os.replace(tmp, path)
                    return None
            except OSError as e:
                fault = f"cannot write the cache {d}: {e.strerror}"
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return fault

    def _receive(self, resp, fd: int, size: int, tty: bool) -> str | None:
        """Copy the response into fd, at most maxsize bytes and exactly its Content-Length;
        on a terminal the progress line shows the share received."""
        import http.client

        got = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while True:
                    try:
                        block = resp.read(FETCH_BLOCK)
                    except (OSError, http.client.HTTPException) as e:
                        return f"the transfer failed ({e})"
                    if not block:
                        break
                    got += len(block)
                    if got > self.maxsize:
                        return f"the file is larger than {self.maxsize} bytes"
                    f.write(block)
                    if tty and size > 0:
                        self.err.write(f" {100 * got // size:3d}%\b\b\b\b\b")
                        self.err.flush()
        finally:
            if tty:
                self.err.write("\n")
        if size >= 0 and got != size:
            return f"the transfer ended after {got} of {size} bytes"
        return None
