"""heuristic.py's searches on synthetic data: each finds its table only where it is exactly
once, and says in one line what it found otherwise (never a first match taken on trust)."""

from __future__ import annotations

import numpy as np
import pytest

from mdbpy.errors import MdbError
from mdbpy_commands.jemalloc.heuristic import Span, find_bins, find_index2size
from mdbpy_commands.jemalloc.layouts import PAGE, SC_NBINS, size_classes

START = 0x7F0000001000


def _span(*parts) -> list[Span]:
    """One span of zero words with each (word index, words) part written in."""
    words = np.zeros(8192, np.uint64)
    for at, ws in parts:
        words[at:at + len(ws)] = ws
    return [Span(START, words)]


def _bin_infos(nregs_of=lambda reg: PAGE * 4 // reg) -> list[int]:
    """bin_info_t words of the small classes: reg_size, slab_size, nregs | n_shards << 32,
    bitmap nbits, ngroups (each slab four pages)."""
    out = []
    for reg in size_classes()[:SC_NBINS]:
        n = nregs_of(reg)
        out += [reg, PAGE * 4, n | 1 << 32, n, (n + 63) // 64]
    return out


def test_index2size_found_once():
    sizes = size_classes()
    assert find_index2size(_span((100, sizes))) == (sizes, START + 800)


@pytest.mark.parametrize("copies", [0, 2])
def test_index2size_not_once(copies):
    sizes = size_classes()
    parts = [(100 + 300 * k, sizes) for k in range(copies)]
    with pytest.raises(MdbError) as e:
        find_index2size(_span(*parts))
    assert str(e.value) == (f"jemalloc: sz_index2size_tab not found: the 232 size classes of "
                            f"5.3 are in the data {copies} times (not initialised, or another "
                            "configuration)")


def test_bins_found():
    bins, at = find_bins(_span((1000, _bin_infos())), size_classes())
    assert at == START + 8000
    assert bins[0] == (8, PAGE * 4, 2048)
    assert len(bins) == SC_NBINS


def test_bins_refused_when_one_record_is_wrong():
    """One slab that would not hold its nregs regions: the whole table is refused."""
    words = _bin_infos()
    words[5 * 10 + 2] += 1  # bin 10's nregs one too many (its bitmap says the old count)
    with pytest.raises(MdbError) as e:
        find_bins(_span((1000, words)), size_classes())
    assert str(e.value) == ("jemalloc: bin_infos not found: 0 places hold 36 bin_info_t of "
                            "the small size classes")
