"""Allocator-independent heap analysis: the allocator interface and the generic engines."""
