"""Layout descriptors: C layout rules, version predicates, aliases, derived fields, views, and
DWARF as the oracle (the built-in layout must equal what the compiler emitted)."""

from __future__ import annotations

import pytest

from mdbpy.errors import MdbError
from mdbpy.layout.bind import AARCH64, X86_64, Binder, format_layout
from mdbpy.layout.desc import (CHAR, I32, LONG, PTR, SIZE_T, U8, U16, U64, Array, Derived,
                               DescriptorSet, Field, Opaque, Ref, Struct)
from mdbpy.layout.dwarf import find_struct
from mdbpy.memory import AddressSpace
from mdbpy.target.synthetic import SyntheticTarget
from support import compile_fixture

INNER = Struct("inner", [Field("a", U16), Field("p", PTR)])
SAMPLE = Struct("sample", source="fixtures/layouts.c", fields=[
    Field("tag", Array(CHAR, 5)),
    Field("i", I32),
    Field("l", LONG),
    Field("lock", Opaque("pthread_mutex_t")),
    Field("small", U8),
    Field("in", Ref("inner")),
    Field("counts", Array(U16, 7)),
    Field("tail_len", SIZE_T),
    Field("tail", Array(U64, None)),
])
SAMPLES = DescriptorSet("test").add(INNER, SAMPLE)

# A struct that changed between versions: a field added in 2.29, a counter array widened in 2.30,
# and a field renamed (old name kept as an alias).
TCACHE = Struct("tcache", source="versioned example", fields=[
    Field("counts", Array(U8, 64), until=(2, 30)),
    Field("counts", Array(U16, 64), since=(2, 30)),
    Field("entries", Array(PTR, 64)),
    Field("key", U64, since=(2, 29), aliases=("tcache_key",)),
    Derived("nbins", lambda v: len(v.entries), "len(entries)"),
])
VERSIONED = DescriptorSet("versioned").add(TCACHE)


def offsets(b):
    return {n: (f.offset, f.size) for n, f in b.fields.items()}


def test_builtin_layout_follows_c_rules():
    b = Binder(SAMPLES, X86_64)["sample"]
    assert offsets(b) == {"tag": (0, 5), "i": (8, 4), "l": (16, 8), "lock": (24, 40),
                          "small": (64, 1), "in": (72, 16), "counts": (88, 14),
                          "tail_len": (104, 8), "tail": (112, 0)}
    assert (b.size, b.align) == (112, 8)
    # the ABI decides the opaque types: aarch64's pthread_mutex_t is 48 bytes
    assert Binder(SAMPLES, AARCH64)["sample"].offset("small") == 72


def test_dwarf_is_the_oracle(build_dir):
    exe = compile_fixture("layouts", build_dir, flags=("-g", "-O0"))
    for name in ("sample", "inner"):
        dw = find_struct(str(exe), name)
        assert dw is not None
        builtin = Binder(SAMPLES, X86_64)[name]
        assert builtin.size == dw.size
        for fname, f in builtin.fields.items():
            assert dw.members[fname][0] == f.offset, fname
        bound = Binder(SAMPLES, X86_64, dwarf={name: dw})[name]
        assert bound.origin == "DWARF layouts"
        assert all(f.origin == "dwarf" for f in bound.fields.values())
        assert offsets(bound) == offsets(builtin)


def test_dwarf_drops_fields_the_target_lacks():
    from mdbpy.layout.bind import DwarfStruct

    dw = DwarfStruct(520, {"counts": (0, 128), "entries": (128, 512)}, "old-libc.debug")
    b = Binder(VERSIONED, X86_64, version=(2, 35), dwarf={"tcache": dw})["tcache"]
    assert list(b.fields) == ["counts", "entries"]
    assert b.size == 520 and b.origin == "DWARF old-libc.debug"


def test_versions_bind_differently():
    old = Binder(VERSIONED, X86_64, version=(2, 28))["tcache"]
    mid = Binder(VERSIONED, X86_64, version=(2, 29))["tcache"]
    new = Binder(VERSIONED, X86_64, version=(2, 35))["tcache"]
    assert (old.size, mid.size, new.size) == (64 + 512, 64 + 512 + 8, 128 + 512 + 8)
    assert not old.has("key") and mid.has("key") and mid.has("tcache_key")
    assert new.field("counts").elem_size == 2 and old.field("counts").elem_size == 1
    assert new.offset("entries") == 128 and old.offset("entries") == 64
    with pytest.raises(MdbError, match="has no field 'key'"):
        old.offset("key")


def test_views_read_fields_aliases_derived_and_flexible_arrays():
    import struct as st

    base = 0x10000
    data = bytearray(160)
    data[0:5] = b"abcd\0"
    st.pack_into("<i", data, 8, -7)
    st.pack_into("<q", data, 16, 0x1122334455667788)
    data[64] = 0xAB
    st.pack_into("<HxxxxxxQ", data, 72, 0xBEEF, 0xDEADBEEF)
    st.pack_into("<7H", data, 88, *range(1, 8))
    st.pack_into("<QQQ", data, 104, 2, 0x51, 0x52)
    mem = AddressSpace(SyntheticTarget([(base, bytes(data))]))
    v = Binder(SAMPLES, X86_64)["sample"].view(mem, base)
    assert v.cstr("tag") == "abcd" and v.i == -7 and v.l == 0x1122334455667788
    assert v.small == 0xAB and v.counts == (1, 2, 3, 4, 5, 6, 7)
    assert v.addr_of("in") == base + 72
    assert (v.index("tail", 0), v.index("tail", 1)) == (0x51, 0x52)
    inner = getattr(v, "in")
    assert (inner.a, inner.p, inner.addr) == (0xBEEF, 0xDEADBEEF, base + 72)

    t = Binder(VERSIONED, X86_64, version=(2, 35))["tcache"]
    raw = bytearray(t.size)
    st.pack_into("<Q", raw, t.offset("key"), 0x1234)
    tv = t.from_bytes(bytes(raw), 0x5000)
    assert tv.tcache_key == tv.key == 0x1234 and tv.nbins == 64


def test_numpy_dtype_decodes_many_structs_at_once():
    import numpy as np

    b = Binder(SAMPLES, X86_64)["sample"]
    raw = bytearray(b.size * 3)
    for k in range(3):
        raw[k * b.size + 64] = k + 1
    arr = np.frombuffer(bytes(raw), dtype=b.dtype())
    assert list(arr["small"]) == [1, 2, 3] and arr.dtype.itemsize == 112


def test_format_layout_golden():
    text = format_layout(Binder(VERSIONED, X86_64, version=(2, 35))["tcache"])
    assert text == (
        "struct tcache (size 0x288, align 8) from builtin x86_64 v2.35\n"
        "  source: versioned example\n"
        "  OFFSET   SIZE  TYPE                     NAME\n"
        "  0x0000   0x80  uint16_t[64]             counts\n"
        "  0x0080  0x200  void *[64]               entries\n"
        "  0x0280    0x8  uint64_t                 key (alias tcache_key)\n"
        "                 (derived)                nbins = len(entries)")
