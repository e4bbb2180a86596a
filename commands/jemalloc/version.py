"""Which jemalloc the target runs, and under which symbol prefixes: found from the symbol
tables and the version string jemalloc embeds.

jemalloc ships under many names: Debian's libjemalloc.so.2, a static copy in a Rust service
(`_rjem_mallocx`, internals `_rjem_je_*`), a `je_` prefixed build beside glibc's malloc, or the
plain names of a build that replaces malloc. Names of files say little, so the symbols decide:
the object that defines `<prefix>mallctlnametomib` (a name only jemalloc's public API has) holds
jemalloc, and <prefix> is its public prefix; its internals (`<ns>arena_emap_global`, 5.2's
`<ns>extents_rtree`, with <ns> usually `je_`) appear only where a symbol table (.symtab)
survived.

A copy linked statically and then stripped (`strip --strip-all`: a Rust service's release
binary) has no symbol at all, its API being in no .dynsym. The executable is then recognised by
two strings jemalloc's own code embeds: its version string and the path of its conf symlink,
`"/etc/" JEMALLOC_PREFIX "malloc.conf"` (jemalloc.c's malloc_conf_init_helper), which names the
public prefix as configured (`/etc/_rjem_malloc.conf`). Both must be there; the heuristics
(heuristic.py) then verify every structure before anything is read as jemalloc's.

The version is the JEMALLOC_VERSION string (`5.3.0-0-g54eaed1d...`: release, commits since it,
git hash) that `mallctl("version")` returns and malloc_stats_print prints, read from the
object's file when it is on this machine, else from the target's read-only mappings of it (a
core from elsewhere). The hash is as long as the VERSION file it was built from says:
jemalloc's configure accepts any (`-g[0-9a-f]+`), and the copy redis bundles (deps/jemalloc,
built into every redis-server made from redis's source with its default allocator) says
`5.2.1-0-g0` or `5.3.0-0-g0`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mdbpy.errors import MdbError
from mdbpy.symbols import cache
from mdbpy.symbols.embedded import embedded, search_file

from .layouts import FACTS

IDENTIFYING = "mallctlnametomib"  # public API, jemalloc only (glibc has no mallctl*)
# the rtree where every extent is registered: 5.3's emap, 5.2's extents_rtree
INTERNAL = ("arena_emap_global", "extents_rtree")
VERSION_RE = re.compile(rb"(\d+)\.(\d+)\.(\d+)-(\d+)-g([0-9a-f]+)\0")
# the conf symlink's path, from jemalloc.c: "/etc/" JEMALLOC_PREFIX "malloc.conf"
CONF_LINK_RE = re.compile(rb"\0/etc/([A-Za-z0-9_]*)malloc\.conf\0")
MAX_SCAN = 64 << 20  # bytes of a file or mapping searched for the version string
SUPPORTED = tuple(sorted(FACTS))  # (major, minor) whose layouts layouts.py describes
# the symbol cache's entry (by build-id) of an executable found to embed no stripped jemalloc,
# {"build_id": ..., "rules": NONE_RULES}: a few dozen bytes, a larger file is not one.
# NONE_RULES names the search that found nothing (how far, for which strings), so that an
# entry written before the search changed is not taken for an answer of the new one
NONE_SUFFIX = ".no-jemalloc"
NONE_RULES = f"{MAX_SCAN}:" + hashlib.sha1(VERSION_RE.pattern + b"|" + CONF_LINK_RE.pattern
                                           ).hexdigest()[:16]
NONE_ENTRY_MAX = 256


@dataclass
class Found:
    """jemalloc in one load object: the object, its public prefix ('' for a build that
    replaces malloc), its private namespace prefix (None: no internal symbols survived) and
    the version (release tuple and the full string; None: no version string found)."""

    obj: object
    prefix: str
    private: str | None
    version: tuple | None
    version_text: str | None
    by_strings: bool = False  # recognised by its embedded strings, no symbol defining it

    @property
    def how(self) -> str:
        """How the object was recognised, for ::jemalloc."""
        if self.by_strings:
            return (f"no symbols; embeds jemalloc's version string and "
                    f"/etc/{self.prefix}malloc.conf")
        return f"defines {self.prefix}{IDENTIFYING}"


def _names(obj) -> list[str]:
    """Every symbol name the object has (.symtab and .dynsym), without reading DWARF."""
    cols = obj.columns() if hasattr(obj, "columns") else None
    if cols is None:
        return [s.name for s in obj.symbols]
    out: list[str] = []
    for k in ("symtab", "dynsym"):
        if k in cols:
            out += cols[k].names
    return out


def _defined(obj, name: str) -> bool:
    s = obj.lookup(name)
    return s is not None and s.type != "undefined" and bool(s.addr)


def find_object(session) -> tuple[object, str] | None:
    """(object, public prefix) of the first object defining a jemalloc public symbol: a
    libjemalloc* first, then the executable, then any other; None when there is none. The
    usual prefixes are looked up directly; others from the object's name list."""
    objs = session.symbols.objects()
    ordered = ([o for o in objs if o.name.startswith("libjemalloc")] +
               [o for o in objs if o.is_exe and not o.name.startswith("libjemalloc")] +
               [o for o in objs if not o.is_exe and not o.name.startswith("libjemalloc")])
    for o in ordered:
        for p in ("", "je_", "_rjem_"):
            if _defined(o, p + IDENTIFYING):
                return o, p
    for o in ordered:
        for n in _names(o):
            if n.endswith(IDENTIFYING) and _defined(o, n):
                return o, n[:-len(IDENTIFYING)]
    return None


def private_prefix(obj, prefix: str) -> str | None:
    """The prefix of jemalloc's internal symbols (`je_`, `_rjem_je_`, ...), from the name of
    the rtree global; None when the object has no such symbol (a stripped library)."""
    for p in (prefix + "je_", "je_", prefix):
        for name in INTERNAL:
            if _defined(obj, p + name):
                return p
    for n in _names(obj):
        for name in INTERNAL:
            if n.endswith(name) and _defined(obj, n):
                return n[:-len(name)]
    return None


def parse_version(data: bytes) -> tuple[tuple, str] | None:
    m = VERSION_RE.search(data)
    if m is None:
        return None
    text = m.group(0)[:-1].decode()
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))), text


def parse_conf_link(data: bytes) -> str | None:
    """The public prefix named by jemalloc's conf symlink path, None when data has none."""
    m = CONF_LINK_RE.search(data)
    return m.group(1).decode() if m else None


def _stripped_exe(session) -> tuple[object, str, tuple] | None:
    """(executable, public prefix, version) when the executable carries jemalloc without any
    symbol naming it: its conf symlink path and its version string both embedded. Most
    executables embed neither, and searching one costs up to MAX_SCAN bytes read: that answer
    is kept by the file's build-id (_none_embedded), paid once per build of a program, when
    it came from the file itself (a core's mappings can miss pages it left out)."""
    exe = next((o for o in session.symbols.objects() if o.is_exe), None)
    if exe is None:
        return None
    bid = _final_build_id(exe)
    if bid is not None and _none_embedded(bid):
        return None
    found = None
    if bid is not None:
        try:
            found = _embedded_pair(lambda parse: search_file(exe.file, parse, MAX_SCAN))
        except OSError:  # no final answer: the target's mappings are searched, nothing kept
            bid = None
    prefix, ver = found or _embedded_pair(
        lambda parse: embedded(session.mem, exe, parse, MAX_SCAN))
    if ver is None:
        if bid is not None:
            cache.store_json(bid, NONE_SUFFIX, {"build_id": bid, "rules": NONE_RULES})
        return None
    return exe, prefix, ver


def _embedded_pair(search) -> tuple[str | None, tuple | None]:
    """(conf prefix, version) as search(parse) finds them; the version is looked for only
    where the prefix is there (both must be)."""
    prefix = search(parse_conf_link)
    return prefix, (search(parse_version) if prefix is not None else None)


def _final_build_id(exe) -> str | None:
    """The executable's build-id when a search of its file can be final: its file is on this
    machine (a search of a core's mappings can miss pages the core left out); None
    otherwise, or without a build-id."""
    info = getattr(exe, "info", None)
    if info is None or not info.build_id or not getattr(exe, "file", None):
        return None
    return info.build_id


def _none_embedded(build_id: str) -> bool:
    """Whether the symbol cache records this build's executable as embedding no jemalloc,
    searched by the rules of now (NONE_RULES: an entry made before they changed is no
    answer)."""
    entry = cache.load_json(build_id, NONE_SUFFIX, NONE_ENTRY_MAX)
    return (isinstance(entry, dict) and entry.get("build_id") == build_id
            and entry.get("rules") == NONE_RULES)


def find(session) -> Found | None:
    """jemalloc in this target (cached per stop), or None when no object defines it and the
    executable embeds none."""
    key = "jemalloc.found"
    if key in session.cache:
        return session.cache[key]
    hit = find_object(session)
    found = None
    if hit is not None:
        obj, prefix = hit
        ver = embedded(session.mem, obj, parse_version, MAX_SCAN)
        found = Found(obj, prefix, private_prefix(obj, prefix), *(ver or (None, None)))
    else:
        bare = _stripped_exe(session)
        if bare is not None:
            obj, prefix, ver = bare
            found = Found(obj, prefix, None, *ver, by_strings=True)
    session.cache[key] = found
    return found


def require(session) -> Found:
    """find(), or the one-line error of a target without jemalloc or with a version whose
    layouts mdbpy does not know."""
    f = find(session)
    if f is None:
        raise MdbError("jemalloc: no jemalloc in this target (no object defines "
                       f"*{IDENTIFYING}, the executable embeds no jemalloc conf path and "
                       "version string)")
    if f.version is None:
        raise MdbError(f"jemalloc: {f.obj.name} has no jemalloc version string")
    if f.version[:2] not in SUPPORTED:
        known = ", ".join(".".join(map(str, v)) + ".x" for v in SUPPORTED)
        raise MdbError(f"jemalloc {f.version_text} ({f.obj.name}) is not supported: mdbpy "
                       f"knows jemalloc {known}")
    return f
