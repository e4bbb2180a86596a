"""numpy idioms the heap code shares where numpy's own spelling is slow at heap sizes."""

from __future__ import annotations


def distinct(values):
    """The sorted distinct values of a 1-D integer array (np.unique's result), by sorting.
    numpy 2.3+ answers a plain np.unique of integers with a hash table: measured here at 0.5 to
    0.9 s for 340,000 uint64 (the pages of a million-region jemalloc heap) where sorting takes
    0.03 s."""
    import numpy as np

    s = np.sort(np.asarray(values).reshape(-1))
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if len(s) else s
