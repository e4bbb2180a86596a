"""mdbpy's slab allocator simulator: deterministic heaps with planted bugs, as real cores."""
