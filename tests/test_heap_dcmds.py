"""The generic heap dcmds (commands/core/heap.py) on the hand-laid simulated heap of
test_sim_dmod (exact leaks, chains and records), and on a toy allocator dmod loaded by path for
mdb's first table (mapped and oversized leaks)."""

from __future__ import annotations

import io
import os
import sys
import termios
import textwrap
import time

import pytest
from test_sim_dmod import DATA, META, RSP, Harness

from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.base import Mapping, Thread
from mdbpy.target.synthetic import SyntheticTarget

RULE = "-" * 72


@pytest.fixture
def h():
    return Harness()


def tracks(h, name):
    return h.objs[name] + h.heap.kc.track_offset


def test_findleaks_tables_golden(h):
    o = h.objs
    expected = (
        "CACHE             LEAKED           BUFFER CALLER\n"
        f"{META + 0x80:016x}       1 {o['I0']:016x} ?\n"
        f"{RULE}\n"
        "           Total       1 buffer, 32 bytes\n"
        "\n"
        "CACHE             LEAKED           BUFCTL CALLER\n"
        f"{META:016x}       1 {tracks(h, 'L3'):016x} main+0x25\n"
        f"{META:016x}       2 {tracks(h, 'L2'):016x} parse_config+0x10\n"
        f"{RULE}\n"
        "           Total       3 buffers, 192 bytes\n")
    assert h.run("::findleaks") == expected
    assert h.run("::findleaks -v") == (
        "findleaks: using cached results (use '-f' to force a full run)\n" + expected)
    out = h.run("::findleaks -fv").splitlines()
    labels = [line[:45] for line in out[:16]]
    assert labels == [
        "findleaks:                maximum buffers => ",
        "findleaks:                 actual buffers => ",
        "findleaks: ",
        "findleaks:             potential pointers => ",
        "findleaks:                     dismissals => ",
        "findleaks:                         misses => ",
        "findleaks:                           dups => ",
        "findleaks:                        follows => ",
        "findleaks: ",
        "findleaks:              anonymous regions => ",
        "findleaks:                anonymous roots => ",
        "findleaks: ",
        "findleaks:              peak memory usage => ",
        "findleaks:               elapsed CPU time => ",
        "findleaks:              elapsed wall time => ",
        "findleaks: "]
    assert out[0].endswith("=> 16") and out[1].endswith("=> 11")
    assert out[7].startswith("findleaks:                        follows => 7   ")
    # the simulated process has no anonymous memory beside its heap
    assert out[9].endswith("=> 0 (0 bytes)") and out[10].endswith("=> 0")
    assert "\n".join(out[16:]) + "\n" == expected


def test_findleaks_detail_marks_heads(h):
    o = h.objs
    out = h.run("::findleaks -d")
    detail = out.split(f"{RULE}\n           Total       3 buffers, 192 bytes\n\n", 1)[1]
    assert detail == textwrap.dedent(f"""\
        inode_cache leak: 1 buffer, 32 bytes,
            sample addr {o['I0']:x}
            unreferenced (heads of leaked structures): 1 of 1
                {o['I0']:x}
        kmalloc-64 leak: 1 buffer, 64 bytes
                    ADDR          BUFADDR        TIMESTAMP           THREAD
                                    CACHE              CPU
        {tracks(h, 'L3'):16x} {o['L3']:16x}               17              101
                         {META:16x}                1
                         main+0x25
                         _start+0x5

            unreferenced (heads of leaked structures): 1 of 1
                {o['L3']:x}
        kmalloc-64 leak: 2 buffers, 64 bytes each, 128 bytes total
                    ADDR          BUFADDR        TIMESTAMP           THREAD
                                    CACHE              CPU
        {tracks(h, 'L2'):16x} {o['L2']:16x}               15              101
                         {META:16x}                1
                         parse_config+0x10
                         main+0x15
                         _start+0x5

            unreferenced (heads of leaked structures): 1 of 2
                {o['L1']:x}
        """)


def test_findleaks_filter_and_walkers(h):
    o = h.objs
    h.run("::walk leak")
    assert h.errors() == ("mdbpy: failed to perform walk: ::findleaks must be run before "
                          "leaks can be walked\n")
    out = h.run("parse_config::findleaks")
    assert out.splitlines()[1:2] == [f"{META:016x}       2 {tracks(h, 'L2'):016x} "
                                     "parse_config+0x10"]
    assert h.run(f"{0x401020 + 0x25:x}::findleaks").count("main+0x25") == 1
    assert h.run("kmalloc::findleaks") == "findleaks: no memory leaks matching kmalloc found\n"

    def walk(cmd):
        return [int(x, 16) for x in h.run(cmd).split()]

    assert walk("::walk leakbuf") == [o["I0"], o["L2"], o["L1"], o["L3"]]
    assert walk("::walk leak") == [o["I0"], tracks(h, "L2"), tracks(h, "L1"), tracks(h, "L3")]
    assert walk(f"{tracks(h, 'L1'):x}::walk leakbuf") == [o["L2"], o["L1"]]
    h.run("1234::walk leak")
    assert h.errors() == "mdbpy: failed to perform walk: 1234 is not a leaked ctl address\n"


def test_whyalive_chain_and_leaked(h):
    o = h.objs
    assert h.run(f"{o['C'] + 4:x}::whyalive") == (
        f"{o['C'] + 4:x} is {o['C']:x}+4, allocated from kmalloc-64, reachable through:\n"
        f"    {'global_head (prog data)':<40s} -> {o['A']:x} (kmalloc-64)\n"
        f"    {o['A']:x}+8{'':26s} -> {o['B']:x} (kmalloc-64)\n"
        f"    {o['B']:x}+10{'':25s} -> {o['C']:x} (kmalloc-64)\n")
    assert h.run(f"{o['S']:x}::whyalive").splitlines()[1] == (
        f"    {f'0x{RSP + 0x40:x} (thread 101 stack)':<40s} -> {o['S']:x} (kmalloc-64)")
    assert h.run(f"{o['L1']:x}::whyalive") == (
        f"{o['L1']:x} is allocated from kmalloc-64: leaked (no path from any root)\n")
    h.run(f"{o['U']:x}::whyalive")
    assert h.errors() == f"mdbpy: {o['U']:x} is not in an allocated heap buffer\n"


def test_whatis_sources(h):
    o = h.objs
    assert h.run(f"{o['C'] + 4:x}::whatis") == textwrap.dedent(f"""\
        {o['C'] + 4:x} is {o['C']:x}+4, allocated from kmalloc-64:
                    ADDR          BUFADDR        TIMESTAMP           THREAD
                                    CACHE              CPU
        {tracks(h, 'C'):16x} {o['C']:16x}                c              101
                         {META:16x}                1
                         main+0x25
                         _start+0x5

        """)
    free_track = tracks(h, "U") + 144
    assert h.run(f"{o['U']:x}::whatis -q") == (
        f"{o['U']:x} is track {free_track:x} freed from kmalloc-64\n")
    assert h.run(f"{o['I0'] + 8:x}::whatis -q") == (
        f"{o['I0'] + 8:x} is {o['I0']:x}+8, allocated from inode_cache\n")
    assert h.run(f"{DATA + 0x10c:x}::whatis") == (
        f"{DATA + 0x10c:x} is config+0x4, in /sim/prog [600000,601000)\n")
    stack = RSP + 0x40
    assert h.run(f"{stack:x}::whatis") == (
        f"{stack:x} is in [ stack ] [7ffcffff0000,7ffd00000000)\n")
    assert h.run("10::whatis") == "10 is unknown\n"
    # a pipe is answered source by source, in address order unless -k; -v names the sources
    h.run("::findleaks")
    t = {k: tracks(h, k) for k in ("L1", "L2", "L3")}
    lines = [f"{o[k]:x} is track {t[k]:x} allocated from kmalloc-64" for k in ("L1", "L2", "L3")]
    lines.append(f"{o['I0']:x} is allocated from inode_cache")
    assert h.run("::walk leakbuf | ::whatis -qv") == "\n".join(["Searching sim`sim..."]
                                                                + lines) + "\n"
    assert h.run("::walk leakbuf | ::whatis -qk") == "\n".join(
        [lines[3], lines[1], lines[0], lines[2]]) + "\n"
    # -a: every source that knows the address
    assert h.run(f"{o['I0']:x}::whatis -aq") == (
        f"{o['I0']:x} is allocated from inode_cache\n"
        f"{o['I0']:x} is in [ anon ] [7f4000000000,7f4000003000)\n")


def test_heap_stats_and_layout_golden(h):
    assert h.run("::heap_stats") == textwrap.dedent("""\
        sim cache                     buf      buf      buf      buf   memory
        name                         size    total   in use     free    total
        ------------------------- ------- -------- -------- -------- --------
        kmalloc-64                     64       12        9        3       8K
        inode_cache                    32        4        2        2       4K
        ------------------------- ------- -------- -------- -------- --------
        Total                                   16       11        5      12K
        """)
    assert h.run("::layout") == textwrap.dedent("""\
        MODULE     STRUCT                     SIZE ORIGIN
        sim        sim_track                  0x90 builtin x86_64
        sim        sim_slab                   0x28 builtin x86_64
        sim        sim_kmem_cache             0x68 builtin x86_64
        sim        sim_allocator              0x48 builtin x86_64
        """)
    assert h.run("::layout sim`sim_kmem_cache") == textwrap.dedent("""\
        struct sim_kmem_cache (size 0x68, align 8) from builtin x86_64
          source: mdbpy simulator, modelled on Linux mm/slub.c with slub_debug
          OFFSET   SIZE  TYPE                     NAME
          0x0000   0x20  char[32]                 name
          0x0020    0x4  uint32_t                 flags
          0x0024    0x4  uint32_t                 object_size
          0x0028    0x4  uint32_t                 size
          0x002c    0x4  uint32_t                 offset
          0x0030    0x4  uint32_t                 inuse
          0x0034    0x4  uint32_t                 red_left_pad
          0x0038    0x4  uint32_t                 track_offset
          0x003c    0x4  uint32_t                 objects_per_slab
          0x0040    0x8  uint64_t                 slab_size
          0x0048    0x8  uint64_t                 nr_slabs
          0x0050    0x8  uint64_t                 total_objects
          0x0058    0x8  void *                   next
          0x0060    0x8  void *                   slabs
                         (derived)                debug = flags & (RED_ZONE | POISON | STORE_USER)
        """)
    h.run("::layout nope")
    assert h.errors() == "mdbpy: no layout named nope (see ::layout)\n"


def test_no_allocator_says_what_is_missing():
    s = Session(SyntheticTarget([(0x1000, bytes(0x100))]), out=io.StringIO(),
                err=io.StringIO())
    e = Engine(s)
    for cmd in ("::findleaks", "::heap_verify", "::heap_stats", "::layout"):
        s.err.seek(0)
        s.err.truncate()
        e.run_string(cmd)
        assert s.err.getvalue() == (
            "mdbpy: no allocator found in this target (mdbpy knows libumem, glibc malloc, "
            "jemalloc and its own simulator; see ::dmods)\n"), cmd
    e.run_string("1010::whatis")
    assert s.out.getvalue() == "1010 is in [ anon ] [1000,1100)\n"


TOY = '''
"""A toy allocator dmod: two anonymous regions and one oversize segment with a record."""
from mdbpy.heap.model import (KIND_MMAP, KIND_OVERSIZE, ALLOC, AllocRecord, Allocator,
                              BufferTable)

DMOD_NAME = "toy"


class Toy(Allocator):
    name = "toy"

    @classmethod
    def detect(cls, session):
        return cls(session)

    def buffers(self):
        base = [0x7f0000100000, 0x7f0000200000, 0x7f0000300000, 0x7f0000400000]
        return BufferTable.from_columns(base, [0x1000, 0x1000, 0x2000, 0x1000], [ALLOC] * 4,
                                        ctl=[0, 0, 0x7f0000500000, 0],
                                        kind=[KIND_MMAP, KIND_MMAP, KIND_OVERSIZE, KIND_MMAP],
                                        groups=["anon"])

    def record(self, table, i):
        if int(table.kind[i]) == KIND_OVERSIZE:
            return AllocRecord((0x401005,), 7, 1, 0x7f0000500000)
        return None


ALLOCATOR = Toy
'''


def test_first_table_through_a_dmod_loaded_by_path(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    data = bytearray(0x1000)
    data[8:16] = (0x7f0000400010).to_bytes(8, "little")  # keeps the fourth region alive
    segs = [(Mapping(0x600000, 0x601000, "rw-p", 0, "08:01", 3, "/toy/prog"), data)]
    segs += [(Mapping(b, b + n, "rw-p"), b"") for b, n in (
        (0x7f0000100000, 0x1000), (0x7f0000200000, 0x1000), (0x7f0000300000, 0x2000),
        (0x7f0000400000, 0x1000))]
    s = Session(SyntheticTarget(segs, threads=[Thread(7, "main", {"rsp": 0x600800})]),
                out=io.StringIO(), err=io.StringIO())
    s.symbols.add_symbols("a.out", [Symbol("main", 0x401000, 0x20)], is_exe=True)
    e = Engine(s)
    e.run_string(f"::load {path}; ::findleaks -d")
    assert s.out.getvalue() == (
        "BYTES             LEAKED         VMEM_SEG CALLER\n"
        "4096                   2     7f0000100000 MMAP\n"
        "4096                   1     7f0000200000 MMAP\n"
        "8192                   1     7f0000500000 main+0x5\n"
        f"{RULE}\n"
        "           Total       3 oversized leaks, 16384 bytes\n"
        "\n"
        "mmap(2) leak: [7f0000100000, 7f0000101000), 4096 bytes\n"
        "mmap(2) leak: [7f0000200000, 7f0000201000), 4096 bytes\n"
        "    unreferenced (heads of leaked structures): 2 of 2\n"
        "        7f0000100000\n        7f0000200000\n"
        "oversize leak: 1 vmem_seg, 8192 bytes\n"
        "            ADDR          BUFADDR        TIMESTAMP           THREAD\n"
        "                            CACHE              CPU\n"
        "    7f0000500000     7f0000300000                1                7\n"
        "                                0                -\n"
        "                 main+0x5\n"
        "\n"
        "    unreferenced (heads of leaked structures): 1 of 1\n"
        "        7f0000300000\n")


def read_until(fd: int, want: bytes, limit: float = 20.0) -> bytes:
    """What a pty's master side shows until `want` appears (or nothing more comes within
    `limit` seconds: a bound against hanging, not a timing the test relies on)."""
    import select

    out = b""
    while want not in out and select.select([fd], [], [], limit)[0]:
        out += os.read(fd, 65536)
    return out


def test_progress_bar_only_on_a_terminal(h, monkeypatch):
    from mdbpy.heap.report import Progress

    master, slave = os.openpty()
    try:
        tty = open(slave, "w", closefd=False)
        monkeypatch.setattr(sys, "stdin", open(slave, closefd=False))
        monkeypatch.setattr(Progress, "DELAY", 0)
        h.session.err = tty
        p = Progress(h.session, "scan")
        p(1, 4)
        shown = read_until(master, b"25.0%")
        p(4, 4)
        p.close()
        shown += read_until(master, b"\x1b[?2004l")  # the bar's application has ended
        assert b"scan  25.0% [" in shown and b"] eta " in shown
        assert shown.endswith(b"\x1b[J\x1b[J\x1b[?7h\x1b[0m\x1b[?2004l\x1b[?12l\x1b[?25h")
    finally:
        os.close(master)
        os.close(slave)
    h.session.err = io.StringIO()
    quiet = Progress(h.session, "scan")
    quiet(1, 2)
    quiet.close()
    assert h.session.err.getvalue() == ""


def test_ctrl_c_on_the_bar_interrupts_the_scan(h, monkeypatch):
    """While the bar is shown the terminal is in raw mode: Ctrl-C arrives as a key, and the
    bar turns it into KeyboardInterrupt in the main thread."""
    import threading

    from mdbpy.heap.report import Progress

    master, slave = os.openpty()
    monkeypatch.setattr(sys, "stdin", open(slave, closefd=False))
    monkeypatch.setattr(Progress, "DELAY", 0)
    h.session.err = open(slave, "w", closefd=False)
    p = Progress(h.session, "scan")
    try:
        p(1, 4)
        read_until(master, b"25.0%")
        # the bar's thread may draw before it puts the terminal in raw mode; a ^C typed before
        # that is the terminal's signal (here, a pty that is no one's controlling terminal:
        # lost), so the key is sent once the bar owns the keyboard
        deadline = time.monotonic() + 20
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):  # the key may be handled before write returns
            os.write(master, b"\x03")
            threading.Event().wait(20)  # a scan's main thread, waiting on its workers
    finally:
        p.close()  # even when the key was lost: the bar's thread would keep pytest alive
        os.close(master)
        os.close(slave)


def test_ctrl_c_stops_findleaks_and_keeps_nothing(tmp_path):
    """SIGINT delivered while findleaks reads the heap (sent from inside its first block
    read, so the scan is certainly under way) aborts it; nothing is cached, and the next run
    finds exactly the planted leaks."""
    import signal

    from mdbpy.errors import CommandAbort
    from mdbpy.sim.build import write
    from mdbpy.sim.generate import generate
    from mdbpy.target.core import CoreTarget
    from mdbpy_commands.core.heap import LEAKS_KEY, run_findleaks

    r = generate(20_000, 0.01, seed=3)
    prog, core, _ = write(r, str(tmp_path))
    s = Session(CoreTarget(core, exe=prog), out=io.StringIO(), err=io.StringIO())
    blocks = s.mem.blocks
    sent = []

    def interrupting(start, end, *args, **kw):
        if not sent:
            sent.append(start)
            os.kill(os.getpid(), signal.SIGINT)
        return blocks(start, end, *args, **kw)

    s.mem.blocks = interrupting
    with pytest.raises(CommandAbort, match="^findleaks: interrupted; no results kept$"):
        run_findleaks(s)
    assert sent and LEAKS_KEY not in s.cache
    report, _, fresh = run_findleaks(s)
    assert fresh and {leak.addr for leak in report.leaks} == {
        x["address"] for x in r.truth["leaks"]}
    assert len(r.truth["leaks"]) == 200
