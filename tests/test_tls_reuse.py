"""A thread's stale DTV entry is not a library's TLS block (mdbpy/symbols/tls.py: dtv_is_current).

fixtures/tls_reuse.c dlcloses a library whose block a worker thread allocated and loads another
that gets the same module id; the worker, parked since, still has the old block in its DTV
entry for that id. Its copy of the new library's __thread variable must not be read from there:
gdb says the thread has not allocated it, mdbpy that the block cannot be placed in the thread,
and the typegraph takes no root from it (the old struct it points at stays unknown, where a
stale read would type it as the new library's struct). The main thread's copy is read as
usual. Live and on a gcore core.

Where the loader's slotinfo list is (an offset in ld.so's _rtld_global) is never guessed: the
builtin offsets are checked against the DWARF of each glibc release at hand; without DWARF or a
builtin offset (or with a wrong one) the list is found by a search that must name every known
TLS object's link_map, here and on glibc 2.41 with its debug files hidden; a wrong offset, or a
slotinfo entry naming another object's link_map, places nothing.
"""

from __future__ import annotations

import subprocess

from pathlib import Path

import pytest
from support import compile_fixture, engine_session, gcore, run_in, start_fixture

from mdbpy.errors import ReadError
from mdbpy.symbols import tls

LIB = "tls_reuse_lib"
NEW = "libtls_new.so"
SYSTEM = (Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/debug"))  # this machine's glibc


@pytest.fixture(scope="module")
def built(build_dir) -> tuple:
    """(executable, [old library, new library]) of fixtures/tls_reuse.c."""
    libs = [compile_fixture(LIB, build_dir, flags=("-g", "-O0", "-shared", "-fPIC", *d),
                            out_name=name, libs=())
            for d, name in ((("-DOLD",), "libtls_old.so"), ((), NEW))]
    return compile_fixture("tls_reuse", build_dir), libs


@pytest.fixture(scope="module")
def reuse(built, build_dir):
    """(executable, Running, its gcore core) of fixtures/tls_reuse.c with its two
    libraries."""
    exe, libs = built
    r = start_fixture(exe, *libs)
    yield exe, r, gcore(r.pid, build_dir / "tls_reuse-gcore")
    r.stop()


@pytest.fixture(scope="module")
def trixie(built):
    """(Release, Running) of the fixture run on glibc 2.41 through its own loader (built here:
    it binds no symbol version 2.41 lacks), its debug files not given to mdbpy."""
    from test_ptmalloc_versions import release_with

    rel = release_with((2, 41))
    exe, libs = built
    r = start_fixture(*rel.loader, exe, *libs)
    yield rel, r
    r.stop()


@pytest.fixture(params=["live", "core"])
def session(request, reuse):
    exe, r, core = reuse
    with engine_session(r.pid) if request.param == "live" else \
            engine_session(core=core, exe=exe) as s:
        yield s


def _threads(s, r) -> tuple[int, int]:
    """(main's tid, the worker's tid)."""
    main, worker = (t.tid for t in s.target.threads())
    assert worker == int(r.info["worker"])
    return main, worker


def test_stale_dtv_entry_is_no_block(session, reuse):
    """main's t_new is its struct new_state, at the address main printed; the worker's DTV
    entry for the reused module id holds its block of the old library (whose t_old, at the
    same place, points at the struct old_state): the new library's block cannot be placed in
    the worker."""
    _check_blocks(session, reuse[1])


def _check_blocks(s, r) -> None:
    """main's t_new is read from its block of the new library, the worker's is refused."""
    main, worker = _threads(s, r)
    run_in(s, f"0t{main}::thread")
    assert run_in(s, f"{NEW}`t_new::print -n") == f"{r.addr('new_state'):#x}\n"
    assert run_in(s, f"{NEW}`t_new=K").split() == [f"{r.addr('new_slot'):x}"]
    run_in(s, f"0t{worker}::thread")
    assert run_in(s, f"{NEW}`t_new::print -n") == ""
    assert s.err.getvalue().splitlines()[-1] == (
        f"mdbpy: {NEW}`t_new is thread-local, and {NEW}'s TLS block cannot be placed in "
        f"thread {worker}")


def test_gdb_finds_no_block_in_the_worker(reuse):
    """The oracle: gdb (through libthread_db, which compares the generations too) prints
    main's t_new and says the worker has not allocated its storage."""
    _, r, _ = reuse
    out = subprocess.run(["gdb", "-batch", "-nx", "-p", str(r.pid), "-ex", "thread 1",
                          "-ex", "print/x t_new", "-ex", "thread 2", "-ex", "print/x t_new"],
                         capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert f"= {r.addr('new_state'):#x}\n" in text
    assert ("The inferior has not yet allocated storage for thread-local variables in\n"
            f"the shared library `{r.proc.args[2]}'\n") in text


def test_stale_block_is_no_typegraph_root(session, reuse):
    """The typegraph's root is main's t_new only: its struct new_state is typed by it, and the
    worker's old struct, which only the stale entry reaches, stays unknown."""
    _, r, _ = reuse
    s = session
    run_in(s, "::typegraph")
    new, old = r.addr("new_state"), r.addr("old_state")
    assert run_in(s, f"{new:x}::whattype -v") == (
        f"{new:x} is 0x0 bytes into struct new_state (member serial)\n"
        f"    in the 0x18-byte buffer at {new:x}, typed by root pointer\n")
    assert run_in(s, f"{old:x}::whattype -v") == (
        f"{old:x} is in the 0x18-byte heap buffer at {old:x}, of unknown type\n")


def _hide_ld_facts(monkeypatch, table=None) -> None:
    """No DWARF of ld.so is read, and RTLD_OFFSETS is table (empty by default)."""
    monkeypatch.setattr(tls, "RTLD_OFFSETS", table or {})
    monkeypatch.setattr(tls, "_rtld_dwarf", {})
    monkeypatch.setattr(tls, "_dwarf_rtld_offset", lambda path: None)


def _list_at(s) -> tuple[int, int]:
    """(address of _rtld_global, where this machine's ld.so DWARF puts the slotinfo list)."""
    return s.symbols.lookup("_rtld_global").addr, tls._dwarf_rtld_offset(_glibc_of(*SYSTEM)[1])


def test_search_finds_the_list(session, reuse, monkeypatch):
    """With neither ld.so's DWARF nor a builtin offset, the search of _rtld_global finds the
    one word pointing to a slotinfo list that names every known TLS object's link_map: the
    DWARF's offset; main's block is placed and the worker's stale entry still refused."""
    expected = _list_at(session)
    _hide_ld_facts(monkeypatch)
    _check_blocks(session, reuse[1])
    assert tls._rtld(session) == expected


def test_wrong_builtin_offset_is_searched_past(session, reuse, monkeypatch):
    """A builtin offset that is not the list's (another build of the release) fails the
    validation, and the search finds the list."""
    rtld, off = _list_at(session)
    _hide_ld_facts(monkeypatch, {v: off + 8 for v in ((2, 31), (2, 36), (2, 41))})
    _check_blocks(session, reuse[1])
    assert tls._rtld(session) == (rtld, off)


def _main_block_args(s) -> tuple[int, int, int]:
    """(main's thread pointer, the new library's module id, its link_map)."""
    th = next(iter(s.target.threads()))
    modid, lmap = tls._module(s, s.symbols.object_named(NEW))
    return th.regs["fs_base"], modid, lmap


def test_wrong_offset_places_nothing(session, reuse):
    """main's block is the one its DTV holds at the list's offset; taken 8 bytes further, the
    offset names no such list, and nothing is placed."""
    s, r = session, reuse[1]
    tp, modid, lmap = _main_block_args(s)
    assert tls.dtv_block(s, tp, modid, lmap) == r.addr("new_slot")
    rtld, off = _list_at(s)
    s.cache["tls.rtld"] = (rtld, off + 8)
    assert tls.dtv_block(s, tp, modid, lmap) is None


def test_another_objects_map_places_nothing(session, reuse):
    """The slotinfo entry of the new library's module id names its link_map, not libc's: asked
    for with libc's link_map, main's block there is not placed."""
    from mdbpy.symbols.linkmap import link_map_of

    s = session
    tp, modid, _ = _main_block_args(s)
    libc = link_map_of(s, s.symbols.object_named("libc.so.6"))
    assert libc is not None
    assert tls.dtv_block(s, tp, modid, libc) is None


def test_search_on_a_release_without_facts(trixie, monkeypatch, tmp_path):
    """glibc 2.41 with no DWARF at hand (its debug files hidden, and a symbol cache of its
    own: the run's shared one remembers the debug file other tests gave 2.41's ld.so) and
    left out of RTLD_OFFSETS: ld.so tells nothing, and the search finds the list where 2.41's
    DWARF puts it; main's block is placed and the worker's stale entry refused."""
    rel, r = trixie
    monkeypatch.setattr(tls, "RTLD_OFFSETS", {})
    monkeypatch.setenv("MDBPY_CACHE_DIR", str(tmp_path))
    with engine_session(r.pid) as s:
        rtld = s.symbols.lookup("_rtld_global")
        assert tls._told_offset(s, rtld) is None
        _check_blocks(s, r)
        assert tls._rtld(s) == (rtld.addr,
                                tls._dwarf_rtld_offset(_glibc_of(rel.lib, rel.debug)[1]))


class _Words:
    """Memory of 8-byte words at the given addresses; any other read fails."""

    def __init__(self, words: dict[int, int]):
        self.words = words

    def read_int(self, addr: int, size: int) -> int:
        if addr not in self.words:
            raise ReadError(addr, size)
        return self.words[addr]

    def read(self, addr: int, n: int) -> bytes:
        return b"".join(self.read_int(a, 8).to_bytes(8, "little") for a in range(addr, addr + n, 8))


# _rtld_global at 0x100 (4 words); a slotinfo list of two arrays: ids 0-1 at 0x1000, ids 2-3 at
# 0x2000 (len, next, then {gen, map} per id); module 1's link_map at 0xA000, module 2's 0xB000.
LISTS = {0x1000: 2, 0x1008: 0x2000, 0x1010: 0, 0x1018: 0, 0x1020: 1, 0x1028: 0xA000,
         0x2000: 2, 0x2008: 0, 0x2010: 3, 0x2018: 0xB000, 0x2020: 0, 0x2028: 0}
RTLD = {0x100: 7, 0x108: 0x1000, 0x110: 0, 0x118: 0xA000}


@pytest.mark.parametrize("rtld, known, expected", [
    (RTLD, [(1, 0xA000), (2, 0xB000)], 8),  # across both arrays
    (RTLD, [(1, 0xB000)], None),  # module 1's entry names another object
    (RTLD, [(3, 0xB000)], None),  # an id with no object
    ({**RTLD, 0x110: 0x1000}, [(1, 0xA000)], None),  # two words point to the list
])
def test_search_offset(rtld, known, expected):
    """search_offset takes the one word of _rtld_global pointing to a list that names every
    known module's link_map (a link_map's own address, 0x118, is no list), else nothing."""
    assert tls.search_offset(_Words({**LISTS, **rtld}), 0x100, 32, known) == expected


def _glibc_of(lib_dir, debug_dir) -> tuple[str, str, str]:
    """(ld.so in lib_dir, its debug file by build-id under debug_dir, libc in lib_dir)."""
    from mdbpy.symbols.elf import build_id_of

    ld = str(lib_dir / "ld-linux-x86-64.so.2")
    bid = build_id_of(ld)
    return ld, str(debug_dir / ".build-id" / bid[:2] / f"{bid[2:]}.debug"), \
        str(lib_dir / "libc.so.6")


class _File:
    """A load object of that file, without DWARF of its own or a debug file found."""

    def __init__(self, path: str):
        self.file = path

    def find_debug_file(self):
        return None


@pytest.mark.parametrize("release", [None, (2, 31), (2, 41)])
def test_rtld_offsets_are_the_dwarf(release):
    """Each release's builtin offset of _dl_tls_dtv_slotinfo_list in struct rtld_global is
    what its ld.so's DWARF says (this machine's glibc: None, and the other releases CI
    unpacks), and an ld.so without DWARF at hand gets it by libc's release string."""
    from mdbpy.symbols.embedded import GLIBC_SCAN, glibc_release, in_file

    if release is None:
        ld, dbg, libc = _glibc_of(*SYSTEM)
    else:
        from test_ptmalloc_versions import release_with

        rel = release_with(release)
        ld, dbg, libc = _glibc_of(rel.lib, rel.debug)
    version = in_file(libc, glibc_release, GLIBC_SCAN)
    assert release in (None, version)
    assert tls._dwarf_rtld_offset(dbg) == tls.RTLD_OFFSETS[version]
    assert tls.rtld_offset(None, _File(ld), _File(libc)) == tls.RTLD_OFFSETS[version]
    assert tls.rtld_offset(None, _File(ld), None) is None
