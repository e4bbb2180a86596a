"""A thread's stale DTV entry is not a library's TLS block (mdbpy/symbols/tls.py: dtv_is_current).

fixtures/tls_reuse.c dlcloses a library whose block a worker thread allocated and loads another
that gets the same module id; the worker, parked since, still has the old block in its DTV
entry for that id. Its copy of the new library's __thread variable must not be read from there:
gdb says the thread has not allocated it, mdbpy that the block cannot be placed in the thread,
and the typegraph takes no root from it (the old struct it points at stays unknown, where a
stale read would type it as the new library's struct). The main thread's copy is read as
usual. Live and on a gcore core. The offsets in ld.so's _rtld_global that this
reads are checked against the DWARF of each glibc release at hand.
"""

from __future__ import annotations

import subprocess

import pytest
from support import compile_fixture, engine_session, gcore, run_in, start_fixture

LIB = "tls_reuse_lib"
NEW = "libtls_new.so"


@pytest.fixture(scope="module")
def reuse(build_dir):
    """(executable, Running, its gcore core) of fixtures/tls_reuse.c with its two
    libraries."""
    libs = [compile_fixture(LIB, build_dir, flags=("-g", "-O0", "-shared", "-fPIC", *d),
                            out_name=name, libs=())
            for d, name in ((("-DOLD",), "libtls_old.so"), ((), NEW))]
    exe = compile_fixture("tls_reuse", build_dir)
    r = start_fixture(exe, *libs)
    yield exe, r, gcore(r.pid, build_dir / "tls_reuse-gcore")
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
    _, r, _ = reuse
    s = session
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
    """Each release's builtin offsets of _dl_tls_dtv_slotinfo_list and _dl_tls_generation in
    struct rtld_global are what its ld.so's DWARF says (this machine's glibc: None, and the
    other releases CI unpacks), and an ld.so without DWARF at hand gets them by libc's
    release string."""
    from pathlib import Path

    from mdbpy.symbols import tls
    from mdbpy.symbols.embedded import GLIBC_SCAN, glibc_release, in_file

    if release is None:
        ld, dbg, libc = _glibc_of(Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/debug"))
    else:
        from test_ptmalloc_versions import release_with

        rel = release_with(release)
        ld, dbg, libc = _glibc_of(rel.lib, rel.debug)
    version = in_file(libc, glibc_release, GLIBC_SCAN)
    assert release in (None, version)
    assert tls._dwarf_rtld_offsets(dbg) == tls.RTLD_OFFSETS[version]
    assert tls.rtld_offsets(None, _File(ld), _File(libc)) == tls.RTLD_OFFSETS[version]
    assert tls.rtld_offsets(None, _File(ld), None) is None
