"""Every umem walker and dcmd on randomly damaged synthetic heaps ends with output or one-line
errors (warnings included), never an internal error, a traceback or a hang (the fuzz tests'
watchdog). MDBPY_FUZZ_EXAMPLES=N runs N examples with fresh seeds.

The damage lands on words that hold something (libumem's globals, caches, slabs, bufctls,
magazines, arenas, segments, the log, buftags, malloc headers), and is replaced by the values
garbage usually has: zero, all ones, small counts, wild pointers, pointers elsewhere into the
heap or into libumem's data (which make cycles and cross-links), and random words.
"""

from __future__ import annotations

import io

import pytest
from fuzz_support import assert_one_line_errors, fuzz_settings, watchdog
from hypothesis import given
from hypothesis import strategies as st
from test_umem_damage import heap
from umem_synth import HEAP, HEAP_SIZE, LIB_DATA, THREAD2

from mdbpy.lang.engine import Engine
from mdbpy_commands.umem import layouts as L

COMMANDS = [
    "::umem_status", "::umem_cache", "::umastat", "::umem_verify",
    "::walk umem_cache | ::umem_verify", "::vmem", "::walk vmem | ::walk vmem_seg | ::vmem_seg",
    "::walk vmem_postfix", "::walk umem", "::walk freemem", "::walk bufctl | ::bufctl",
    "::walk freectl | ::bufctl -h", "::walk umem_cache | ::walk umem_slab",
    "::walk umem_cache | ::walk umem_slab_partial", "::walk umem_cpu",
    "::walk umem_cache | ::walk umem_cpu_cache", "::walk umem_cache | ::walk umem_hash",
    "::walk umem_log", "::umalog", "::umem_log", "::umausers -e", "::umem_malloc_dist",
    "::umem_malloc_info", f"{THREAD2:x}::allocdby", f"{THREAD2:x}::freedby",
    "::walk umem_alloc_80", "::walk umem_ptc_32", "::findleaks", "7f3a40410000::whatis",
    "::heap_verify",
]


@pytest.fixture(scope="module")
def pristine():
    """The finished heap, and the addresses of its words that hold something other than
    libumem's fill patterns (the damage targets)."""
    import numpy as np

    u, _t = heap()
    u.finish()
    words = []
    for start in (LIB_DATA, HEAP):
        w = np.frombuffer(bytes(u.m.segs[start]), "<u8")
        meta = (w != 0) & (w != L.UMEM_FREE_PATTERN) & (w != L.UMEM_UNINITIALIZED_PATTERN)
        words += (start + 8 * np.nonzero(meta)[0]).tolist()
    return u, {k: bytes(v) for k, v in u.m.segs.items()}, words


VALUES = st.one_of(
    st.just(0), st.just((1 << 64) - 1), st.integers(1, 300), st.integers(0, (1 << 64) - 1),
    st.integers(HEAP, HEAP + HEAP_SIZE - 1).map(lambda a: a & ~7),
    st.integers(LIB_DATA, LIB_DATA + 0x8000).map(lambda a: a & ~7),
    st.integers(0xDEAD0000, 0xDEADFFFF))


@fuzz_settings(50)
@given(data=st.data())
def test_damaged_heaps_never_crash(pristine, data):
    u, segs, words = pristine
    n = data.draw(st.integers(1, 6), label="words damaged")
    picks = data.draw(st.lists(st.tuples(st.sampled_from(words), VALUES), min_size=n,
                               max_size=n), label="damage")
    u.m.segs = {k: bytearray(v) for k, v in segs.items()}
    for addr, value in picks:
        u.m.u64(addr, value)
    out, err = io.StringIO(), io.StringIO()
    engine = Engine(u.session(out=out, err=err))
    with watchdog():
        for cmd in COMMANDS:
            engine.run_string(cmd)
            assert_one_line_errors(err.getvalue())
            err.seek(0)
            err.truncate()
