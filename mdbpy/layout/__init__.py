"""Layout descriptors: C structs described once as data (desc.py), bound per session to an ABI,
an allocator version and DWARF when present (bind.py), read through typed views."""
