"""An mdbpy allocator module for bumpalloc.c, the example of docs/new-allocator.md.

Installed as a package (`pip install examples/bumpalloc`: its pyproject.toml declares the entry
point `bumpalloc` in the group mdbpy.modules), it loads itself when is_present() finds bumpalloc
in the target; or load it by path with `::load examples/bumpalloc/bumpalloc.py`. Its dcmd
(::bumpstat) and walker (bump_buf) appear, and because it exports ALLOCATOR the generic heap
engines (::findleaks, ::whatis, ::whyalive, ::heap_stats) find bumpalloc's buffers next to those
of any other allocator in the target.

What it reads: the global `bump_arena` (found by symbol, checked by its magic), then the headers
in [base, cursor), each followed by its buffer. The target is untrusted: the arena must be
sane before anything is read, the headers are read in one bounded read, and a bad header ends
the walk with a warning instead of an exception.
"""

from __future__ import annotations

from mdbpy.dcmd import dcmd, walker
from mdbpy.errors import MdbError
from mdbpy.heap.model import ALLOC, FREE, AllocRecord, Allocator, BufferTable
from mdbpy.layout.bind import X86_64, Binder
from mdbpy.layout.desc import PTR, U64, DescriptorSet, Field, Struct

DMOD_NAME = "bumpalloc"
SOURCE = "examples/bumpalloc/bumpalloc.c"
ARENA_SYMBOL = "bump_arena"
BUMP_MAGIC = 0x42554D5041524E41  # "BUMPARNA"
HDR_MAGIC = 0x4255464845414452  # "BUFHEADR"
STATES = {1: ALLOC, 2: FREE}
MAX_ARENA = 1 << 30  # a larger arena is not a bumpalloc arena: do not read it

# The structs, written once as data: offsets and sizes come from binding them to the ABI.
LAYOUTS = DescriptorSet("bumpalloc").add(
    Struct("bump_arena", source=SOURCE, fields=[
        Field("magic", U64), Field("base", PTR), Field("cursor", PTR), Field("limit", PTR),
        Field("nallocs", U64), Field("nfrees", U64)]),
    Struct("bump_hdr", source=SOURCE, fields=[
        Field("magic", U64), Field("size", U64), Field("state", U64), Field("caller", PTR)]),
)


class BumpAllocator(Allocator):
    """The bumpalloc arena of a target: one group, buffers in address order."""

    name = "bumpalloc"
    record_name = "header"  # what ::whatis -q calls the control address

    def __init__(self, session, arena):
        super().__init__(session)
        self.arena = arena  # the bump_arena view
        self.binder = session.cache[("bumpalloc", "binder")]
        self._table: BufferTable | None = None
        self._callers: dict[int, int] = {}  # header address -> caller pc

    @classmethod
    def detect(cls, session) -> BumpAllocator | None:
        binder = session.cache.setdefault(("bumpalloc", "binder"), Binder(LAYOUTS, X86_64))
        arena = cls.root_at(session, ARENA_SYMBOL, binder, "bump_arena")
        if arena is None or arena.magic != BUMP_MAGIC:
            return None  # never initialized (nothing allocated yet) or not bumpalloc's
        if not arena.base <= arena.cursor <= arena.limit <= arena.base + MAX_ARENA:
            session.warn(f"bumpalloc: arena at 0x{arena.addr:x} is inconsistent")
            return None
        return cls(session, arena)

    def buffers(self) -> BufferTable:
        if self._table is None:
            self._table = self._walk()
        return self._table

    def request_sizes(self, table: BufferTable):
        """Exactly the buffer's size: each header records the size asked for."""
        return table.size, table.size

    def _walk(self) -> BufferTable:
        hdr = self.binder["bump_hdr"]
        base, end = self.arena.base, self.arena.cursor
        data = self.session.mem.read(base, end - base)
        bases, sizes, states, ctls = [], [], [], []
        off = 0
        while off + hdr.size <= len(data):  # each step moves forward: bounded by the read
            h = hdr.from_bytes(data[off:off + hdr.size], base + off)  # fields by name
            if h.magic != HDR_MAGIC or h.state not in STATES or \
                    h.size > len(data) - off - hdr.size:
                self.session.warn(f"bumpalloc: bad header at 0x{base + off:x}; walk stopped")
                break
            bases.append(base + off + hdr.size)
            sizes.append(h.size)
            states.append(STATES[h.state])
            ctls.append(base + off)
            self._callers[base + off] = h.caller
            off += hdr.size + h.size
        return BufferTable.from_columns(bases, sizes, states, ctl=ctls, groups=["bump"])

    def heap_regions(self) -> list[tuple[int, int]]:
        return [(self.arena.base, self.arena.limit)]

    def group_addr(self, table: BufferTable, i: int) -> int:
        return self.arena.addr

    def record(self, table: BufferTable, i: int) -> AllocRecord | None:
        ctl = int(table.ctl[i])
        return AllocRecord(stack=(self._callers[ctl],), addr=ctl)


ALLOCATOR = BumpAllocator


def is_present(session) -> bool:
    """Autoloading asks this of every installed module: is the allocator in this target? A
    symbol lookup, cheap and quiet; BumpAllocator.detect() then reads and checks the arena."""
    return session.symbols.lookup(ARENA_SYMBOL) is not None


def _allocator(session) -> BumpAllocator:
    for a in session.allocators():
        if isinstance(a, BumpAllocator):
            return a
    raise MdbError("bumpalloc: no bumpalloc arena in this target")


@dcmd("bumpstat", "print the bumpalloc arena's counters",
      help="The arena's address range, the bytes used, and the buffers allocated and freed, "
           "as the arena counts them and as the header walk finds them.",
      example="::bumpstat")
def bumpstat(inv):
    inv.no_operands()
    a = _allocator(inv.session)
    t = a.buffers()
    inuse = int((t.state == ALLOC).sum())
    v = a.arena
    inv.print(f"arena {v.addr:x}: [{v.base:x}, {v.limit:x}), {v.cursor - v.base} bytes used")
    inv.print(f"allocs {v.nallocs}, frees {v.nfrees}; walked {len(t)} buffers, {inuse} in use")
    return 0


@walker("bump_buf", "walk the allocated bumpalloc buffers")
def bump_buf(session, addr):
    t = _allocator(session).buffers()
    for i in range(len(t)):
        if t.state[i] == ALLOC:
            yield int(t.base[i])
