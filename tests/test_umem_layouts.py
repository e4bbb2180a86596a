"""The umem descriptors reproduce the layouts measured on x86_64 Linux (gdb `ptype /o` of a
debug libumem, shared/reference/umem-layout.md), for both portable revisions; and when the
library has debug info the layouts come from its DWARF (checked on fixtures/umem_layout.c, the
structs declared from the same facts and compiled with -g)."""

import pytest
from support import compile_fixture, run_mdbpy

from mdbpy.layout.bind import Binder
from mdbpy.layout.dwarf import find_structs
from mdbpy_commands.umem import layouts as L

SIZES = {"umem_cache": 696, "umem_slab": 56, "umem_bufctl": 24, "umem_bufctl_audit": 80,
         "umem_buftag": 24, "umem_log_header": 208, "umem_cpu_log_header": 128,
         "umem_cpu_cache": 128, "umem_magazine": 16, "umem_maglist": 40, "umem_magtype": 32,
         "umem_cpu": 8, "vmem": 3144, "vmem_seg": 232, "vmem_freelist": 32, "vmem_kstat": 112,
         "malloc_data": 8}

OFFSETS = {
    "umem_cache": {"cache_name": 88, "cache_bufsize": 120, "cache_arena": 168,
                   "cache_cflags": 176, "cache_flags": 180, "cache_next": 192,
                   "cache_cpu_mask": 224, "cache_lock": 232, "cache_chunksize": 272,
                   "cache_bufctl": 288, "cache_buftag": 296, "cache_verify": 304,
                   "cache_hash_shift": 344, "cache_hash_mask": 352, "cache_freelist": 360,
                   "cache_nullslab": 368, "cache_bufctl_cache": 424, "cache_hash_table": 432,
                   "cache_depot_lock": 440, "cache_magtype": 480, "cache_full": 488,
                   "cache_empty": 528, "cache_cpu": 568},
    "umem_bufctl_audit": {"bc_cache": 24, "bc_timestamp": 32, "bc_thread": 40,
                          "bc_lastlog": 48, "bc_contents": 56, "bc_depth": 64, "bc_stack": 72},
    "umem_log_header": {"lh_base": 40, "lh_free": 48, "lh_chunksize": 56, "lh_nchunks": 64,
                        "lh_head": 68, "lh_tail": 72, "lh_hits": 76, "lh_cpu": 80},
    "umem_cpu_log_header": {"clh_current": 40, "clh_avail": 48, "clh_chunk": 56,
                            "clh_hits": 60, "clh_pad": 64},
    "umem_cpu_cache": {"cc_alloc": 40, "cc_free": 44, "cc_loaded": 48, "cc_ploaded": 56,
                       "cc_rounds": 64, "cc_prounds": 68, "cc_magsize": 72, "cc_flags": 76,
                       "cc_pad": 80},
    "umem_magtype": {"mt_minbuf": 8, "mt_maxbuf": 16, "mt_cache": 24},
    "vmem": {"vm_cv": 32, "vm_lock": 80, "vm_id": 120, "vm_cflags": 128, "vm_quantum": 136,
             "vm_source": 168, "vm_next": 176, "vm_hash_table": 200, "vm_freemap": 224,
             "vm_seg0": 232, "vm_rotor": 464, "vm_hash0": 696, "vm_qcache": 824,
             "vm_freelist": 952, "vm_kstat": 3032},
    "vmem_seg": {"vs_anext": 32, "vs_type": 48, "vs_import": 49, "vs_depth": 50,
                 "vs_thread": 56, "vs_timestamp": 64, "vs_stack": 72},
    "vmem_kstat": {"vk_source_id": 24, "vk_alloc": 32, "vk_free": 40, "vk_fail": 56,
                   "vk_contains_search": 104},
}


@pytest.mark.parametrize("version", [L.CLASSIC, L.ILLUMOS_2016])
def test_sizes_and_offsets_match_the_measured_layouts(version):
    b = Binder(L.UMEM_LAYOUTS, version=version)
    assert {n: b[n].size for n in SIZES} == SIZES
    for struct, offs in OFFSETS.items():
        assert {f: b[struct].offset(f) for f in offs} == offs, struct


def test_constants_and_formulas():
    assert L.maxbuf(L.CLASSIC) == 16384 and L.maxbuf(L.ILLUMOS_2016) == 131072
    assert L.size_encode(50) == 0x3107 and L.size_encode(66) == 0x40B7
    assert L.size_valid(0x40B7) and L.size_decode(0x40B7) == 66
    assert L.audit_size(0) == 72 and L.audit_size(15) == 192
    assert L.MALLOC_SECOND_MAGIC - 66 == 0x16BA6FBE
    assert L.UMF_BUFTAG == 6 and (L.UMF_PTC, L.UMF_CHECKNULL) == (0x800, 0x1000)


@pytest.fixture(scope="module")
def layout_exe(tmp_path_factory):
    """fixtures/umem_layout.c: the umem structs declared from the measured layouts, with -g,
    as a program mdbpy takes for libumem linked statically."""
    return compile_fixture("umem_layout", tmp_path_factory.mktemp("umem_layout"),
                           flags=("-g", "-O0", "-fno-eliminate-unused-debug-types"))


def test_dwarf_layouts_equal_the_builtin_descriptors(layout_exe):
    """The DWARF oracle: every struct the dmod reads, field by field."""
    dwarf = find_structs(str(layout_exe), L.STRUCT_NAMES, cu_hint="umem.c")
    assert sorted(dwarf) == sorted(L.STRUCT_NAMES)
    builtin = Binder(L.UMEM_LAYOUTS, version=L.CLASSIC)
    bound = Binder(L.UMEM_LAYOUTS, version=L.CLASSIC, dwarf=dwarf)
    for name in L.STRUCT_NAMES:
        b, d = builtin[name], bound[name]
        assert (d.origin, b.origin) == ("DWARF umem_layout", "builtin x86_64 v2010.6"), name
        assert d.size == b.size, name
        assert {f: (x.offset, x.size) for f, x in d.fields.items()} == \
            {f: (x.offset, x.size) for f, x in b.fields.items()}, name
        assert all(x.origin == "dwarf" for x in d.fields.values()), name


def test_layout_dcmd_names_dwarf_as_the_source(layout_exe):
    p = run_mdbpy(str(layout_exe), "-e", "::layout; ::layout umem_cache")
    assert p.returncode == 0, p.stderr
    rows = [x.split() for x in p.stdout.splitlines() if x.startswith("umem ")]
    assert [r[1] for r in rows] == list(L.STRUCT_NAMES)
    assert all(r[3:] == ["DWARF", "a.out", "debug", "info"] for r in rows)
    assert "struct umem_cache (size 0x2b8, align 8) from DWARF a.out debug info\n" in p.stdout
    assert "  0x0170   0x38  struct umem_slab         cache_nullslab\n" in p.stdout


def test_a_stripped_twin_is_not_given_its_builds_cached_dwarf(layout_exe, tmp_path):
    """The layouts bound from DWARF are cached by build-id, and `strip --strip-debug` keeps
    the build-id: after the -g program was read, its stripped copy still has no DWARF of its
    own, so its layouts are the builtin ones, never the cached entry's."""
    import subprocess

    twin = tmp_path / "umem_layout_stripped"
    subprocess.run(["strip", "--strip-debug", "-o", str(twin), str(layout_exe)], check=True)
    origins = {}
    for exe in (layout_exe, twin, layout_exe):
        p = run_mdbpy(str(exe), "-e", "::layout")
        assert p.returncode == 0, p.stderr
        origins[str(exe)] = {" ".join(x.split()[3:]) for x in p.stdout.splitlines()
                             if x.startswith("umem ")}
    assert origins[str(layout_exe)] == {"DWARF a.out debug info"}
    assert origins[str(twin)] == {"builtin x86_64 v2010.6"}
