"""jemalloc's detection on synthetic symbol tables (every prefix a copy can carry, an object
without jemalloc) and its version rules (a version mdbpy does not know is one line naming it),
and a corrupt emap in a real core: one warning line per damaged structure, the leaks still
exact, no traceback."""

from __future__ import annotations

import shutil
import struct
from types import SimpleNamespace

import pytest
from jemalloc_builds import compile_debian, compile_dwarf
from support import gcore, run_mdbpy, start_fixture

from mdbpy.errors import MdbError
from mdbpy.symbols.base import LoadObject, Symbol
from mdbpy.symbols.embedded import READ_STEP
from mdbpy_commands.jemalloc import version as jv


def _obj(name: str, symbols: list[str], is_exe: bool = False) -> LoadObject:
    o = LoadObject(name, base=0x1000, end=0x100000, is_exe=is_exe,
                   symbols=[Symbol(n, 0x2000 + 16 * i, 8, obj=name)
                            for i, n in enumerate(symbols)])
    o.finish()
    return o


def _session(*objs):
    """A session of these objects; the target maps nothing else (no mappings to search)."""
    return SimpleNamespace(symbols=SimpleNamespace(objects=lambda: list(objs)), cache={},
                           mem=SimpleNamespace(mappings=lambda: []))


@pytest.mark.parametrize("names, prefix, private", [
    (["mallctlnametomib", "je_arena_emap_global"], "", "je_"),
    (["mallctlnametomib", "je_extents_rtree"], "", "je_"),  # 5.2's rtree global
    (["je_mallctlnametomib", "je_je_arena_emap_global"], "je_", "je_je_"),
    (["_rjem_mallctlnametomib", "_rjem_je_arena_emap_global"], "_rjem_", "_rjem_je_"),
    (["moz_mallctlnametomib"], "moz_", None),  # a prefix found from the name list; stripped
])
def test_prefixes(names, prefix, private):
    exe = _obj("a.out", ["main", *names], is_exe=True)
    s = _session(_obj("libc.so.6", ["malloc", "free"]), exe)
    obj, got = jv.find_object(s)
    assert (obj, got) == (exe, prefix)
    assert jv.private_prefix(obj, got) == private


def test_shared_library_first():
    lib = _obj("libjemalloc.so.2", ["mallctlnametomib"])
    s = _session(_obj("a.out", ["main"], is_exe=True), _obj("libc.so.6", ["malloc"]), lib)
    assert jv.find_object(s) == (lib, "")


def test_absent():
    s = _session(_obj("a.out", ["main", "mallctl_like"], is_exe=True),
                 _obj("libc.so.6", ["malloc"]))
    assert jv.find_object(s) is None
    with pytest.raises(MdbError, match=r"^jemalloc: no jemalloc in this target \(no object "
                                       r"defines \*mallctlnametomib, the executable embeds no "
                                       r"jemalloc conf path and version string\)$"):
        jv.require(s)


VERSION = b"5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c\0"
CONF_LINK = b"\0/etc/_rjem_malloc.conf\0"


@pytest.mark.parametrize("blob, found", [
    (b"\0<jemalloc>: Malformed conf string\0" + CONF_LINK + b"_RJEM_MALLOC_CONF\0" + VERSION,
     True),
    (b"\0a program's own git describe\0" + VERSION, False),  # no conf path: not jemalloc
    (CONF_LINK, False),  # no version string
])
def test_stripped_exe_by_its_strings(tmp_path, blob, found):
    """An executable no symbol names jemalloc in is jemalloc's when its file embeds both
    jemalloc's conf symlink path (which names the public prefix) and a version string; one
    of them alone is not enough."""
    exe = _obj("a.out", ["main"], is_exe=True)
    exe.file = str(tmp_path / "a.out")
    # the conf path across the end of the file's first read chunk (embedded.READ_STEP)
    pad = READ_STEP - max(blob.find(b"/etc/"), 0) - 3
    (tmp_path / "a.out").write_bytes(bytes(pad) + blob)
    s = _session(_obj("libc.so.6", ["malloc"]), exe)
    got = jv.find(s)
    if not found:
        assert got is None
        return
    assert (got.obj, got.prefix, got.private, got.version, got.version_text, got.how) == (
        exe, "_rjem_", None, (5, 3, 0), VERSION[:-1].decode(),
        "no symbols; embeds jemalloc's version string and /etc/_rjem_malloc.conf")


def test_no_stripped_jemalloc_cached_by_build_id(tmp_path, symbol_cache_dir):
    """An executable searched and found to embed no jemalloc is recorded by its build-id and
    not searched again (its file changed under the same build-id is not read) while the search
    is the same; an executable
    whose file is not here (a search of a core's mappings, which may lack pages) or that has
    no build-id is never recorded."""
    bid = f"{tmp_path.stat().st_ino:040x}"  # a build-id of this test's own
    exe = _obj("a.out", ["main"], is_exe=True)
    exe.file = str(tmp_path / "a.out")
    exe.info = SimpleNamespace(build_id=bid)
    (tmp_path / "a.out").write_bytes(b"\0a program without jemalloc\0")
    assert jv.find(_session(exe)) is None
    assert (symbol_cache_dir / f"{bid}{jv.NONE_SUFFIX}").is_file()
    (tmp_path / "a.out").write_bytes(CONF_LINK + VERSION)
    assert jv.find(_session(exe)) is None
    # an entry of another search (its strings or reach changed since) is no answer
    entry = symbol_cache_dir / f"{bid}{jv.NONE_SUFFIX}"
    entry.write_text(entry.read_text().replace(jv.NONE_RULES, "4096:0123456789abcdef"))
    assert jv.find(_session(exe)).by_strings
    exe.info = SimpleNamespace(build_id=None)
    assert jv.find(_session(exe)).by_strings
    exe.info, exe.file = SimpleNamespace(build_id=bid[::-1]), None
    assert jv.find(_session(exe)) is None
    assert not (symbol_cache_dir / f"{bid[::-1]}{jv.NONE_SUFFIX}").exists()


def test_version_string():
    """A release's string (a 40-digit hash) and the one redis's bundled copy has (VERSION
    says `g0`: jemalloc's configure accepts any hash length)."""
    blob = b"\0junk\0" + b"5.2.1-0-gea6b3e973b477b8061e0076bb257dbd7f3faa756\0more"
    assert jv.parse_version(blob) == ((5, 2, 1),
                                      "5.2.1-0-gea6b3e973b477b8061e0076bb257dbd7f3faa756")
    assert jv.parse_version(b"\0" + b"5.2.1-0-g0\0") == ((5, 2, 1), "5.2.1-0-g0")
    assert jv.parse_version(b"5.3.0 without a hash\0") is None
    assert jv.parse_version(b"5.3.0-0-g\0") is None


def test_unsupported_version_names_it():
    """5.1.0 (before sc.h's size classes and 5.2's extent bits) is one line naming it."""
    s = _session()
    s.cache["jemalloc.found"] = jv.Found(
        _obj("libjemalloc.so.2", ["mallctlnametomib"]), "", "je_", (5, 1, 0),
        "5.1.0-0-g61efbda7098de6fe64c362d309824864308c36d4")
    with pytest.raises(MdbError) as e:
        jv.require(s)
    assert str(e.value) == ("jemalloc 5.1.0-0-g61efbda7098de6fe64c362d309824864308c36d4 "
                            "(libjemalloc.so.2) is not supported: mdbpy knows jemalloc 5.2.x, "
                            "5.3.x")


def _cored(tmp_path, build: str = "dwarf"):
    """(the finished run, exe, core) of the heap fixture linked with the -g build, or with
    Debian's stripped library ("debian": found by the heuristics)."""
    exe = (compile_debian if build == "debian" else compile_dwarf)("jemalloc_heap", tmp_path)
    run = start_fixture(exe)
    try:
        return run, exe, gcore(run.pid, tmp_path / "core")
    finally:
        run.stop()


def _file_offset(core, addr: int) -> int:
    """Where the core file holds the byte at addr (its PT_LOAD headers)."""
    from elftools.elf.elffile import ELFFile

    with open(core, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            h = seg.header
            if h.p_type == "PT_LOAD" and h.p_vaddr <= addr < h.p_vaddr + h.p_filesz:
                return h.p_offset + addr - h.p_vaddr
    raise AssertionError(f"0x{addr:x} is not in the core")


@pytest.mark.parametrize("build", ["dwarf", "debian"])
def test_corrupt_emap_in_a_core(tmp_path, build):
    """Two rtree leaf elements smashed in a copy of a core: one names an unmapped edata_t,
    the other a real edata_t that does not hold the page. Each is one warning line (and the
    unreadable one is a region ::findleaks says it could not trust); the walk keeps
    everything else, so the planted leaks are still exactly found. Without symbols the
    heuristics still find the root: a leaf needs most of its elements, not all, to hold
    their pages."""
    import mdbpy
    from mdbpy_commands.jemalloc.extents import extents
    from mdbpy_commands.jemalloc.state import locate

    run, exe, core = _cored(tmp_path, build)
    d = mdbpy.open_core(str(core), str(exe))
    try:
        st = locate(d.session)
        ex = extents(d.session, st)
        # the page right after the highest extent is registered to nothing; its element is
        # in the leaf the root names for its top bits (the heap may span several leaves)
        free_page = int((ex.base + ex.size).max())
        leaf = int.from_bytes(d.read(st.root + 8 * (free_page >> 30), 8), "little")
        assert leaf in ex.leaves
        slot = leaf + ((free_page >> 12) & ((1 << 18) - 1)) * 8
        assert d.read(slot, 8) == bytes(8)
        other = int(ex.edata[0])  # a real edata_t, registered elsewhere
    finally:
        d.close()
    bad = tmp_path / "bad.core"
    shutil.copy(core, bad)
    with open(bad, "r+b") as f:
        f.seek(_file_offset(bad, slot))
        f.write(struct.pack("<Q", 0x10000))  # an edata_t in unmapped memory
        f.seek(_file_offset(bad, slot + 8))
        f.write(struct.pack("<Q", (other | 1)))
    r = run_mdbpy(exe, bad, "-e", "::findleaks")
    assert "Traceback" not in r.stderr
    stray = slot_page = free_page + 4096
    assert r.stderr.splitlines() == [
        "mdbpy: jemalloc: unreadable edata_t 0x10000 (named by the emap)",
        f"mdbpy: jemalloc: rtree: page 0x{slot_page:x} is registered to edata_t 0x{other:x}, "
        "which does not hold it",
        "mdbpy: findleaks: [10000, 10080) not trusted: unreadable edata_t 0x10000 (named by "
        "the emap)",
        f"mdbpy: findleaks: [{stray:x}, {stray + 4096:x}) not trusted: rtree: page "
        f"0x{slot_page:x} is registered to edata_t 0x{other:x}, which does not hold it"]
    planted = {int(a, 16) for a in run.info["leaks"].split(",")}
    assert "Total      12 buffers" in r.stdout
    assert all(f"{a:016x}" in r.stdout for a in planted)


def test_double_free_through_the_tcache(tmp_path):
    """A tcache stack slot overwritten with the pointer of the slot above it, in a copy of a
    core: the region is cached twice, which ::heap_verify reports in one line."""
    import mdbpy
    from mdbpy_commands.jemalloc.state import locate, tcaches

    _run, exe, core = _cored(tmp_path)
    d = mdbpy.open_core(str(core), str(exe))
    try:
        st = locate(d.session)
        tc = st.binder["tcache_s"]
        bins = tcaches(d.session, st)[0]
        v = tc.view(d.session.mem, bins.addr)
        k, b = next((k, x) for k, x in enumerate(v.bins) if x.ncached >= 2)
        first = struct.unpack("<Q", d.read(b.stack_head, 8))[0]
        size = st.index2size[k]
    finally:
        d.close()
    bad = tmp_path / "bad.core"
    shutil.copy(core, bad)
    with open(bad, "r+b") as f:
        f.seek(_file_offset(bad, b.stack_head + 8))
        f.write(struct.pack("<Q", first))
    r = run_mdbpy(exe, bad, "-e", "::heap_verify")
    assert "Traceback" not in r.stderr
    assert f"region cached twice (double free): tcache 0x{bins.addr:x} bin {size}" in r.stdout


@pytest.mark.parametrize("release", ["5.3", "5.2"])
def test_builtin_layouts_match_dwarf(release):
    """Every struct the module lays out itself for a release agrees with that release's -g
    build's DWARF (5.3.0's, and 5.2.1's under .ci/jemalloc-5.2/g), field by field; edata_t
    (5.2's extent_t) through its named members and size, DWARF cannot name its unions; and
    base_t's counters follow `blocks` where Facts says (the heuristics look there when a
    build without stats leaves them 0)."""
    from jemalloc_builds import BULLSEYE_G, CI_BUILD, need_ci_build

    from mdbpy.layout.bind import Binder
    from mdbpy.layout.dwarf import find_structs
    from mdbpy_commands.jemalloc.layouts import FACTS
    from mdbpy_commands.jemalloc.state import _check_edata, dwarf_names

    facts = FACTS[tuple(map(int, release.split(".")))]
    b = need_ci_build(BULLSEYE_G if release == "5.2" else CI_BUILD)
    names = dwarf_names(facts)
    dwarf = {names[k]: v for k, v in
             find_structs(str(b / "lib" / "libjemalloc.so.2"), names, cu_hint="arena.c").items()}
    assert set(facts.layouts.structs) | {"arena_s", "base_s"} <= set(dwarf)
    _check_edata(dwarf, facts, release)  # raises when edata_t differs
    rest = {k: dwarf[k] for k in facts.layouts.structs if k != "edata_s"}
    bound = Binder(facts.layouts, dwarf=rest)
    assert {n: bound[n].differs for n in rest} == {n: [] for n in rest}
    base = dwarf["base_s"].members
    assert base["allocated"][0] - base["blocks"][0] == facts.counters_after_blocks
