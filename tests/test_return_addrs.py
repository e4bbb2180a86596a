"""Return addresses are named by their call (the symbol of pc-1), as gdb names a caller's frame.

A function whose last instruction is a call to a noreturn function (abort, exit, longjmp) has
no epilogue, so the return address of that call is the first byte of the next function in
memory. mdb prints a return address as it is, `sym+off` with off counted from the symbol that
contains pc-1: the caller of such a call prints as `f+<size of f>`, never as the next function.
The innermost frame of a thread, a signal trampoline and the pc a signal interrupted are exact
pcs, named as they are.

fixtures/noreturn.c is the live and core case (gdb's bt is the oracle for the pcs and the
functions); the synthetic libumem heap of tests/umem_synth.py is the stored-stack case
(bc_stack and vs_stack hold only return addresses: getpcstack() records each frame's saved
return address). The simulator's tracks cannot hold one at a function's end: every simulated
function ends with `leave; ret` after its last call.
"""

from __future__ import annotations

import io
import json
import subprocess

import pytest
from support import (FIXTURES, SYS_PAUSE, compile_fixture, gcore, mapped_base, run_mdbpy,
                     start_fixture, wait_syscalls, without_args)
from test_unwind import gdb_stacks
from umem_synth import THREAD1, SynthUmem, exe_pc, lib_pc

import mdbpy
from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.symbols.table import named_at

# functions in source order with no padding between them, so die_here's return address (past
# its `call abort`) is exactly where after_die starts
NORETURN_FLAGS = ("-O2", "-fomit-frame-pointer", "-g", "-fno-reorder-functions",
                  "-falign-functions=1")


@pytest.fixture(scope="module")
def noreturn_exe(build_dir):
    return compile_fixture("noreturn", build_dir, flags=NORETURN_FLAGS)


@pytest.fixture(scope="module")
def noreturn_parked(noreturn_exe, build_dir):
    """(Running, core): the fixture parked in its SIGABRT handler, abort() on its stack, and a
    gcore of it in that state; the process runs until the module's tests are done."""
    r = start_fixture(noreturn_exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        yield r, gcore(r.pid, build_dir / "noreturn-gcore")
    finally:
        r.stop()


def functions(exe) -> dict[str, tuple[int, int]]:
    """{name: (file address, size)} of the executable's functions, from nm."""
    out = subprocess.run(["nm", "-S", "--defined-only", str(exe)], capture_output=True,
                         text=True, check=True).stdout
    funcs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            funcs[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return funcs


def source_line(text: str) -> int:
    """The line of fixtures/noreturn.c holding `text`."""
    lines = (FIXTURES / "noreturn.c").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def expected_exe_frames(exe, core, pid: int, bias: int) -> list[str]:
    """What $c must print for the executable's frames: gdb's pcs and functions, each printed
    as function+offset from the start nm gives that function."""
    funcs = functions(exe)
    out = []
    for pc, name in gdb_stacks(exe, core)[pid]:
        if name in funcs:
            off = pc - bias - funcs[name][0]
            out.append(f"{name}+0x{off:x}" if off else name)
    return out


def frame_names(text: str) -> list[str]:
    """The `sym+off` of each `$C` / `$c` line (the frame pointer column dropped)."""
    return [without_args(line).split()[-1].removesuffix("()") for line in text.splitlines()
            if line.endswith(")")]


def test_fixture_premise(noreturn_exe):
    """die_here and outer end with a call, and the next function starts right there."""
    f = functions(noreturn_exe)
    assert f["die_here"][0] + f["die_here"][1] == f["after_die"][0]
    assert f["outer"][0] + f["outer"][1] == f["main"][0]


def check_stack(text: str, exe, core, r) -> None:
    f = functions(exe)
    bias = mapped_base(r.pid, exe)
    names = frame_names(text)
    exe_frames = [n for n in names if "`" not in n]
    want = expected_exe_frames(exe, core, r.pid, bias)
    assert exe_frames == want, text
    # the callers of the noreturn calls, at the very end of their functions
    assert f"die_here+0x{f['die_here'][1]:x}" in exe_frames
    assert f"outer+0x{f['outer'][1]:x}" in exe_frames
    assert not any(n == "main" or n.startswith("after_die") for n in names)
    assert exe_frames[0].startswith("on_abort+")  # the handler, at a return address
    # the signal trampoline and the frame it interrupted are named at their exact pcs
    i = next(k for k, n in enumerate(names) if n.endswith("`__restore_rt"))
    assert "pthread_kill" in names[i + 1] or "raise" in names[i + 1], names


def test_core_stack(noreturn_parked, noreturn_exe):
    r, core = noreturn_parked
    res = run_mdbpy(core, "-e", "$C")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    check_stack(res.stdout, noreturn_exe, core, r)
    res = run_mdbpy(core, "-e", "::stack")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    check_stack(res.stdout, noreturn_exe, core, r)


def test_live_stack(noreturn_parked, noreturn_exe):
    r, core = noreturn_parked
    res = run_mdbpy("-p", r.pid, "-e", "$C")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    check_stack(res.stdout, noreturn_exe, core, r)
    r.assert_untouched()


def test_lines_frame_pointer_and_api(noreturn_parked, noreturn_exe):
    """-l gives the line of the call; `fp$c` from abort's frame starts with die_here, at the
    same return address; the Python API (and so ::stacks' JSON) names frames the same way."""
    r, core = noreturn_parked
    f = functions(noreturn_exe)
    die = f"die_here+0x{f['die_here'][1]:x}"
    out = run_mdbpy(core, "-e", "::stack -l").stdout
    assert f"{die}() at {FIXTURES / 'noreturn.c'}:{source_line('abort();')}" in out, out
    assert f"outer+0x{f['outer'][1]:x}() at {FIXTURES / 'noreturn.c'}:" \
           f"{source_line('die_here(why + 1);')}" in out, out
    lines = run_mdbpy(core, "-e", "$C").stdout.splitlines()
    k = next(i for i, line in enumerate(lines) if without_args(line).endswith(f" {die}()"))
    fp = lines[k - 1].split()[0]  # abort's frame: `fp$c` walks from its caller
    res = run_mdbpy(core, "-e", f"{fp}$c")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.splitlines()[0] == f"{die}()"
    with mdbpy.open_core(str(core)) as dbg:
        frames = dbg.stack()
        bias = mapped_base(r.pid, noreturn_exe)
        hit = next(fr for fr in frames if fr.name == die)
        assert hit.pc == bias + f["after_die"][0]
        doc = json.loads(dbg.run("::set -o json; ::stacks"))
        assert die in [fr["name"] for fr in doc["threads"][0]["frames"]]


# -- stored stacks: libumem's bc_stack and vs_stack -----------------------------------------

END = exe_pc("leak_some", 0x100)  # leak_some's end, where read_config starts: a noreturn call
STACK = [lib_pc("umem_cache_alloc"), lib_pc("umem_alloc"), lib_pc("malloc"), END,
         exe_pc("main", 0x40)]
SEG_STACK = [lib_pc("vmem_xalloc"), lib_pc("vmem_alloc"), lib_pc("malloc"), END]


def _heap():
    u = SynthUmem()
    u.standard_arenas()
    u.start_log()
    c = u.cache("umem_alloc_32", 32, align=16)
    leak = u.alloc(c, 16, STACK)
    seg = u.oversize_alloc(20000, SEG_STACK)
    return u, c, leak, seg


class _Run:
    def __init__(self, session):
        self.session = session
        self.out, self.err = io.StringIO(), io.StringIO()
        session.out, session.err = self.out, self.err
        self.engine = Engine(session)

    def __call__(self, cmd: str) -> str:
        for f in (self.out, self.err):
            f.seek(0)
            f.truncate()
        self.engine.run_string(cmd)
        assert self.err.getvalue() == "", self.err.getvalue()
        return self.out.getvalue()


def test_shared_rule():
    """named_at: pc-1 for a return address, pc itself for an exact pc (and 0 stays 0)."""
    assert named_at(END) == END - 1 and named_at(END, ret=False) == END
    assert named_at(0) == 0
    u, _c, _leak, _seg = _heap()
    s = u.session()
    assert s.format_addr(END) == "read_config"
    assert s.format_addr(END, ret=True) == "leak_some+0x100"
    sym, off = s.symbols.lookup_addr(END, ret=True)
    assert (sym.name, off) == ("leak_some", 0x100)


def test_umem_stored_stacks():
    u, c, leak, seg = _heap()
    run = _Run(u.session())
    bc = c.bufctl[leak]
    caller = "leak_some+0x100"
    tables = run("::findleaks")
    rows = [line for line in tables.splitlines() if line.endswith(caller)]
    assert len(rows) == 2, tables  # the oversize segment and the bufctl
    blocks = {
        "::findleaks -d": run("::findleaks -d"),
        "::bufctl -v": run(f"{bc:x}::bufctl -v"),
        "::umalog": run("::umalog"),
        "::vmem_seg -v": run("*umem_oversize_arena::walk vmem_alloc | ::vmem_seg -v"),
        "::whatis": run(f"{leak:x}::whatis"),
        "::umausers -f": run("::umausers -f umem_alloc_32"),
    }
    for cmd, text in blocks.items():
        assert caller in text.split(), (cmd, text)
        assert "read_config" not in text, (cmd, text)
    assert run(f"{bc:x}::bufctl").split()[-1] == caller
    assert run(f"{THREAD1:x}::allocdby").split()[-1] == caller
    assert run(f"{u.oversize[seg]:x}::vmem_seg").split()[-1] == caller
    # a function filter matches the frame its call is in, not the function after it
    assert run(f"{bc:x}::bufctl -c leak_some").split()[-1] == caller
    assert run(f"{bc:x}::bufctl -c read_config") == ""
    assert caller in run("leak_some::findleaks")  # (read_config:: matches too: it is the pc)
    with mdbpy.Debugger(u.session()) as dbg:
        doc = json.loads(dbg.run("::set -o json; ::findleaks -d"))
        assert {g["caller_name"] for g in doc["leaks"] if g["caller"] == END} == {caller}
        assert all(g["record"]["stack_names"][3] == caller for g in doc["leaks"]
                   if g["caller"] == END)


def test_umem_static_allocator_frames():
    """Linked statically, a frame is libumem's when its call is in a umem_*/vmem_* function:
    a return address at the end of vmem_xalloc (where malloc starts) is still the allocator's,
    so the caller is the first frame past it."""
    u, c, _leak, _seg = _heap()
    stack = [lib_pc("umem_cache_alloc"), lib_pc("vmem_xalloc", 0x100), END,
             exe_pc("main", 0x40)]
    assert lib_pc("vmem_xalloc", 0x100) == lib_pc("malloc", 0)
    leak = u.alloc(c, 16, stack)
    s = Session(u.target())
    lib, exe = u.symbols()
    s.symbols.add_symbols("a.out", lib + exe, is_exe=True)  # libumem inside the executable
    run = _Run(s)
    assert run(f"{c.bufctl[leak]:x}::bufctl").split()[-1] == "leak_some+0x100"
    assert "vmem_xalloc+0x100" in run(f"{c.bufctl[leak]:x}::bufctl -v").split()
    rows = [line.split() for line in run("::findleaks; ::walk leak").splitlines()]
    # malloc is libumem's too (libumem_malloc.a): both leaks of the cache have the same
    # caller and stack past the allocator, so they form one group
    assert [r[-1] for r in rows if len(r) == 4 and r[0] == f"{c.addr:016x}"] == \
        ["leak_some+0x100"]
    assert f"{c.bufctl[leak]:#x}" in [r[0] for r in rows if len(r) == 1]
