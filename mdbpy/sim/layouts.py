"""The simulator's structures, described once in the layout language.

The simulator writes its heaps byte for byte through these descriptors, and the `sim` dmod reads
them back through the same descriptors, so the two can never disagree about an offset. The
model is the Linux kernel's SLUB allocator with slub_debug (mm/slub.c, include/linux/slub_def.h):
caches of fixed-size slots carved from slabs, a free pointer per free slot, and, with debugging
on, red zones, poisoning, padding and alloc/free tracking in every slot.

Slot layout (every offset is a field of `sim_kmem_cache`, like SLUB's kmem_cache):

    slot + 0                      left red zone, red_left_pad bytes (SIM_RED_ZONE)
    slot + red_left_pad           the object, object_size bytes          <- what malloc returns
    object + object_size          right red zone up to inuse - (free pointer, tracks) (RED_ZONE)
    object + offset               the free pointer (only meaningful while the slot is free)
    object + track_offset         struct sim_track alloc; struct sim_track free (STORE_USER)
    ... up to slot + size         padding, filled with SIM_PADDING_BYTE

Red zones hold SIM_REDZONE_INACTIVE (slot free) or SIM_REDZONE_ACTIVE (slot allocated);
a free object (POISON) holds SIM_POISON_FREE bytes with SIM_POISON_END as its last byte.
Free pointers are stored plain (no hardening), pointing at the next free object (not slot).
"""

from __future__ import annotations

from mdbpy.layout.desc import CHAR, PTR, U32, U64, Array, Derived, DescriptorSet, Field, Struct

SOURCE = "mdbpy simulator, modelled on Linux mm/slub.c with slub_debug"

# cache flags (values as in the kernel's include/linux/slab.h)
SIM_RED_ZONE = 0x00000400
SIM_POISON = 0x00000800
SIM_STORE_USER = 0x00010000

# debug fill bytes (include/linux/poison.h)
SIM_REDZONE_INACTIVE = 0xBB
SIM_REDZONE_ACTIVE = 0xCC
SIM_POISON_FREE = 0x6B
SIM_POISON_END = 0xA5
SIM_PADDING_BYTE = 0x5A

SIM_TRACK_ADDRS = 16  # frames kept per track record (TRACK_ADDRS_COUNT)
SIM_MAGIC = 0x4D44425053494D31  # 'MDBPSIM1': sim_allocator.magic, how the dmod detects a heap

SIM_TRACK = Struct("sim_track", source=SOURCE, fields=[
    Field("addrs", Array(PTR, SIM_TRACK_ADDRS)),  # caller pcs, innermost first, 0-terminated
    Field("cpu", U32),
    Field("pid", U32),  # the thread id that did it
    Field("when", U64),  # a timestamp in nanoseconds since the scenario started
])

SIM_SLAB = Struct("sim_slab", source=SOURCE, fields=[
    Field("next", PTR),  # the cache's list of slabs
    Field("cache", PTR),
    Field("base", PTR),  # the first slot
    Field("freelist", PTR),  # the first free object, 0 when full
    Field("inuse", U32),
    Field("objects", U32),
])

SIM_KMEM_CACHE = Struct("sim_kmem_cache", source=SOURCE, fields=[
    Field("name", Array(CHAR, 32)),
    Field("flags", U32),
    Field("object_size", U32),  # the size callers asked for
    Field("size", U32),  # the slot size, metadata included
    Field("offset", U32),  # free pointer offset from the object
    Field("inuse", U32),  # object offset where the metadata (free pointer, tracks) starts
    Field("red_left_pad", U32),
    Field("track_offset", U32),  # object offset of the alloc track (free track follows)
    Field("objects_per_slab", U32),
    Field("slab_size", U64),  # bytes of one slab (a power-of-two number of pages)
    Field("nr_slabs", U64),
    Field("total_objects", U64),
    Field("next", PTR),  # the next cache (0 ends the list)
    Field("slabs", PTR),  # this cache's first sim_slab
    Derived("debug", lambda v: v.flags & (SIM_RED_ZONE | SIM_POISON | SIM_STORE_USER),
            "flags & (RED_ZONE | POISON | STORE_USER)"),
])

SIM_ALLOCATOR = Struct("sim_allocator", source=SOURCE, fields=[
    Field("magic", U64),  # SIM_MAGIC
    Field("version", U32),
    Field("ncaches", U32),
    Field("caches", PTR),  # the first sim_kmem_cache
    Field("slab_area", PTR),  # [slab_area, slab_area_end): all slab memory
    Field("slab_area_end", PTR),
    Field("metadata", PTR),  # [metadata, metadata_end): caches and slab descriptors
    Field("metadata_end", PTR),
    Field("clock", U64),  # the scenario's last timestamp
    Field("cpus", U32),
    Field("pad", U32),
])

# The global the simulated program exports; its address is in the program's symbol file.
SIM_ALLOCATOR_SYMBOL = "sim_allocator"

SIM_LAYOUTS = DescriptorSet("sim").add(SIM_TRACK, SIM_SLAB, SIM_KMEM_CACHE, SIM_ALLOCATOR)
