"""The unwinder against gdb, on a core and on the live process, and on hostile stacks.

The stacks fixture is built with -O2 -fomit-frame-pointer, so its frames and glibc's can only be
found through CFI. gdb's `thread apply all bt` on the core is the oracle: for every thread, the
pcs mdbpy finds must be gdb's, and the function names `::stacks` prints must be gdb's, inlined
frames included, up to aliases (glibc's `pause` is gdb's `__libc_pause`: the same address).
"""

from __future__ import annotations

import io
import re
import subprocess

from support import STACKS_FLAGS, compile_fixture, run_mdbpy, start_stacks, without_args

from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.base import Thread
from mdbpy.target.core import open_file_target
from mdbpy.target.live import LiveTarget
from mdbpy.target.synthetic import SyntheticTarget
from mdbpy.unwind import unwind, unwind_regs
from mdbpy.unwind.cfi import eval_expr, read_sections

MAIN_CHAIN = ["main_level4", "main_level3", "main_level2", "main_level1", "main"]
SIGNAL_FRAME = "__restore_rt"  # glibc's signal trampoline: where a handler returns to


def gdb_stacks(exe, core, inlined: bool = False) -> dict[int, list[tuple[int, str]]]:
    """{tid: [(pc, function)]} from gdb, every frame with its address, past main; the inlined
    frames folded into the real frame that holds them (fold), unless `inlined`."""
    out = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "set backtrace past-main on",
         "-ex", "set print frame-info location-and-address",
         "-ex", "thread apply all bt", str(exe), str(core)],
        capture_output=True, text=True, timeout=120, check=True).stdout
    stacks: dict[int, list[tuple[int, str]]] = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"Thread \d+ \(.*\(LWP (\d+)\)\)", line)
        if m:
            cur = stacks.setdefault(int(m.group(1)), [])
            continue
        if re.match(r"#\d+\s+<signal handler called>", line) and cur is not None:
            cur.append((None, SIGNAL_FRAME))  # gdb shows neither pc nor name for it
            continue
        m = re.match(r"#\d+\s+0x([0-9a-f]+) in (\S+) \(", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2)))
    return stacks if inlined else {tid: fold(frames) for tid, frames in stacks.items()}


def fold(frames: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """gdb's frames without the inlined ones: an inlined frame shares its pc with the next
    frame, the real one holding it."""
    return [f for f, after in zip(frames, frames[1:] + [(None, "")])
            if f[0] is None or f[0] != after[0]]


def printed_stacks(text: str) -> dict[int, list[str]]:
    """{tid: [symbol as printed]} from ::stacks output, an inlined frame's `[inlined] ` taken
    off."""
    out: dict[int, list[str]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"THREAD (\d+)", line)
        if m:
            cur = out.setdefault(int(m.group(1)), [])
        elif line.endswith("()") and cur is not None:
            cur.append(re.sub(r"\+0x[0-9a-f]+$", "", line[:-2].removeprefix("[inlined] ")))
    return out


def same_function(session, gdb_name: str, shown: str) -> bool:
    """`shown` (obj`sym) names the function gdb calls gdb_name: the same name, or an alias at
    the same address in the same object."""
    obj, _, sym = shown.rpartition("`")
    if sym == gdb_name:
        return True
    a = session.symbols.lookup(gdb_name, obj or "a.out")
    b = session.symbols.lookup(sym, obj or "a.out")
    return a is not None and b is not None and a.addr == b.addr


def check_against_gdb(session, printed: dict[int, list[str]], shown) -> None:
    """The unwound frames are gdb's real ones (shown: gdb_stacks with its inlined frames), and
    ::stacks names every frame gdb shows, inlined ones too."""
    assert sorted(printed) == sorted(shown)
    for t in session.target.threads():
        gdb = fold(shown[t.tid])
        frames = unwind(session, t)
        assert [f.truncated for f in frames] == [None] * len(frames)
        assert len(frames) == len(gdb), t.tid
        assert [f.pc if pc else None for f, (pc, _) in zip(frames, gdb)] == [
            pc for pc, _ in gdb], t.tid
        assert [f.signal for f in frames] == [n == SIGNAL_FRAME for _, n in gdb]
        names = printed[t.tid]
        assert len(names) == len(shown[t.tid])
        for name, (_, want) in zip(names, shown[t.tid]):
            assert same_function(session, want, name), (t.tid, name, want)


def test_core_stacks_match_gdb(stacks_parked, stacks_exe):
    r, core = stacks_parked
    shown = gdb_stacks(stacks_exe, core, inlined=True)
    gdb = {tid: fold(frames) for tid, frames in shown.items()}
    main = [n for _, n in gdb[r.pid]]
    assert main[1:6] == MAIN_CHAIN and main[-1] == "_start"
    reader = [n for _, n in gdb[int(r.info["reader"])]]
    assert reader[1:5] == ["reader_level3", "reader_level2", "reader_level1", "reader_top"]
    assert reader[-1] == "clone3"
    signalled = [n for _, n in gdb[int(r.info["signalled"])]]
    assert signalled[1:8] == ["handler_level1", "on_usr1", SIGNAL_FRAME, "__GI___sigsuspend",
                              "signalled_level1", "signalled_top", "start_thread"]

    res = run_mdbpy(core, "-e", "::stacks")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    with open_file_target(str(core)) as target:
        check_against_gdb(Session(target), printed_stacks(res.stdout), shown)


def test_live_stacks_match_gdb(stacks_parked, stacks_exe):
    r, core = stacks_parked
    shown = gdb_stacks(stacks_exe, core, inlined=True)
    with LiveTarget(r.pid) as target:
        s = Session(target, out=io.StringIO())
        assert Engine(s).run_string("::stacks") == 0
        check_against_gdb(s, printed_stacks(s.out.getvalue()), shown)
    r.assert_untouched()


def test_dollar_c_and_frame_pointers(stacks_parked):
    """$c is the current thread's stack; addr$c, given a $C frame pointer, continues with the
    caller of that frame."""
    r, core = stacks_parked
    res = run_mdbpy(core, "-e", "$c; $C")
    lines = res.stdout.splitlines()
    n = len(lines) // 2
    c, big_c = lines[:n], lines[n:]
    assert [ln.split("+")[0] for ln in c[1:6]] == MAIN_CHAIN
    assert [without_args(ln).split(" ", 1)[1] for ln in big_c] == c
    # main_level1(1) -> main_level2(2) -> here, its value on entry too, as gdb's bt shows it
    assert big_c[2].endswith("(depth=depth@entry=0x3)")
    fp = big_c[2].split()[0]  # main_level3's frame
    res = run_mdbpy(core, "-e", f"0x{fp}$c")
    assert res.stdout.splitlines() == c[3:]


def test_debug_frame_only(build_dir):
    """Code without .eh_frame entries unwinds through .debug_frame."""
    exe = compile_fixture("stacks", build_dir, out_name="stacks-df",
                          flags=STACKS_FLAGS + ("-fno-asynchronous-unwind-tables",))
    r = start_stacks(exe)
    try:
        with LiveTarget(r.pid) as target:
            s = Session(target)
            lo = s.symbols.object_named("a.out")
            sym = s.symbols.lookup("main_level4")
            eh, debug = read_sections(lo.file)
            assert eh.row(sym.value) is None and debug.row(sym.value) is not None
            main = s.current_thread()
            names = [s.format_addr(f.pc).split("+")[0] for f in unwind(s, main)]
    finally:
        r.stop()
    assert names[1:6] == MAIN_CHAIN and names[-1] == "_start"


# -- hostile stacks: synthetic memory, no CFI ----------------------------------------------------
CODE = 0x400000
STACK = 0x70000000


def hostile_session(regs: dict, stack: bytes = b"") -> tuple[Session, io.StringIO]:
    target = SyntheticTarget([(CODE, bytes(0x1000), "r-xp"), (STACK, stack or bytes(0x1000))],
                             threads=[Thread(1, "t1", regs)])
    err = io.StringIO()
    s = Session(target, out=io.StringIO(), err=err)
    s.symbols.add_symbols("a.out", [Symbol("func", CODE, 0x100)], is_exe=True)
    return s, err


def words(*pairs) -> bytes:
    """Stack bytes with little-endian words (offset, value) set."""
    buf = bytearray(0x1000 * 0x20)
    for off, val in pairs:
        buf[off:off + 8] = val.to_bytes(8, "little")
    return bytes(buf)


def test_section_offset_past_any_file_is_no_cfi():
    """An ELF image (a vDSO read from a damaged core) whose .eh_frame_hdr says it lies 2**63
    bytes in has no CFI: the frame pointers unwind instead (it was an internal error)."""
    import struct

    from elftools.elf.elffile import ELFFile

    raw = bytearray(open("/lib/x86_64-linux-gnu/libc.so.6", "rb").read())
    elf = ELFFile(io.BytesIO(bytes(raw)))
    i = next(i for i, sec in enumerate(elf.iter_sections()) if sec.name == ".eh_frame_hdr")
    struct.pack_into("<Q", raw, elf["e_shoff"] + i * elf["e_shentsize"] + 24, 2**63 + 5)
    assert read_sections(bytes(raw)) == []


def test_garbage_stack_pointer():
    s, err = hostile_session({"rip": CODE + 0x10, "rsp": 0xDEAD0000, "rbp": 0xDEAD0000})
    frames = unwind(s, s.current_thread())
    assert len(frames) == 1 and frames[0].truncated == "cannot read the stack at 0xdead0000"
    assert Engine(s).run_string("$c") == 0
    assert s.out.getvalue() == "func+0x10()\n"
    assert err.getvalue() == ("mdbpy: stack of thread 1 stops early: cannot read the stack at "
                              "0xdead0000\n")


def test_garbage_pc():
    s, _ = hostile_session({"rip": 0x1234, "rsp": STACK + 0x100, "rbp": 0})
    frames = unwind(s, s.current_thread())
    assert [(f.pc, f.truncated) for f in frames] == [
        (0x1234, "pc 0x1234 is not in executable memory")]


def test_frame_pointer_cycle():
    a, b = STACK + 0x100, STACK + 0x200
    stack = words((0x100, b), (0x108, CODE + 0x20), (0x200, a), (0x208, CODE + 0x30))
    s, _ = hostile_session({"rip": CODE + 0x10, "rsp": STACK + 0x80, "rbp": a}, stack)
    frames = unwind(s, s.current_thread())
    assert [f.pc for f in frames] == [CODE + 0x10, CODE + 0x20, CODE + 0x30]
    assert frames[-1].truncated == (f"frame address 0x{a + 16:x} does not increase: corrupt "
                                    f"stack or a cycle")
    assert [f.truncated for f in frames[:-1]] == [None, None]


def test_maximum_depth():
    """A well-formed chain longer than the limit ends in a truncated frame at the limit."""
    n = 1100
    pairs = []
    for i in range(n):
        pairs += [(0x100 + 16 * i, STACK + 0x100 + 16 * (i + 1)), (0x108 + 16 * i, CODE + 0x40)]
    s, _ = hostile_session({"rip": CODE + 0x10, "rsp": STACK, "rbp": STACK + 0x100},
                           words(*pairs))
    frames = unwind(s, s.current_thread())
    assert len(frames) == 1024
    assert frames[-1].truncated == "stopped at the maximum depth of 1024 frames"
    assert all(f.truncated is None for f in frames[:-1])


def test_end_of_frame_pointer_chain():
    """rbp 0 in the outermost frame (as _start leaves it) ends the stack cleanly."""
    stack = words((0x100, 0), (0x108, CODE + 0x50))
    s, _ = hostile_session({"rip": CODE + 0x10, "rsp": STACK + 0x80, "rbp": STACK + 0x100},
                           stack)
    frames = unwind(s, s.current_thread())
    assert [(f.pc, f.truncated) for f in frames] == [(CODE + 0x10, None), (CODE + 0x50, None)]


def test_plt_cfa_expression(stacks_exe):
    """The linker's CFA expression for .plt entries: rsp+8 before the entry pushes its
    relocation index (offsets 0-10 of a 16-byte entry), rsp+16 after."""
    from elftools.elf.elffile import ELFFile

    with open(stacks_exe, "rb") as f:
        plt = ELFFile(f).get_section_by_name(".plt")["sh_addr"]
    eh = read_sections(str(stacks_exe))[0]
    rsp = 0x7FFF0000
    for off, cfa in ((0x10, rsp + 8), (0x1A, rsp + 8), (0x1B, rsp + 16), (0x1F, rsp + 16)):
        row = eh.row(plt + off)
        regs = {7: rsp, 16: plt + off}
        assert eval_expr(row.cfa_expr, regs.__getitem__, None) == cfa, hex(off)


def test_malformed_cfi_is_an_unwind_error(stacks_exe, tmp_path):
    """Target files are untrusted: a corrupted .eh_frame answers None or UnwindError for every
    pc, never another exception."""
    import random

    from elftools.elf.elffile import ELFFile

    from mdbpy.unwind.cfi import UnwindError

    data = bytearray(stacks_exe.read_bytes())
    with open(stacks_exe, "rb") as f:
        elf = ELFFile(f)
        eh, text = elf.get_section_by_name(".eh_frame"), elf.get_section_by_name(".text")
        off, size = eh["sh_offset"], eh["sh_size"]
        lo, hi = text["sh_addr"], text["sh_addr"] + text["sh_size"]
    rng = random.Random(4)
    for seed_off in range(off + 4, off + size, 7):
        data[seed_off] = rng.randrange(256)
    bad = tmp_path / "corrupt"
    bad.write_bytes(bytes(data))
    outcomes = set()
    for sec in read_sections(str(bad)):
        for pc in range(lo, hi, 3):
            try:
                outcomes.add(type(sec.row(pc)).__name__)
            except UnwindError:
                outcomes.add("UnwindError")
    assert outcomes <= {"NoneType", "Row", "UnwindError"} and "UnwindError" in outcomes


def test_vdso_frames(stacks_parked):
    """A frame in the kernel's vDSO (no file: its CFI is read from the target's memory) unwinds
    into its caller: here a call to clock_gettime planted on main's real stack."""
    from elftools.elf.elffile import ELFFile

    _, core = stacks_parked
    with open_file_target(str(core)) as target:
        s = Session(target)
        frames = unwind(s, s.current_thread())
        base = target.auxv()[33]  # AT_SYSINFO_EHDR
        vdso = ELFFile(io.BytesIO(s.mem.read(base, s.mem.mapping_at(base).size)))
        sym = vdso.get_section_by_name(".dynsym").get_symbol_by_name("__vdso_clock_gettime")[0]
        entry = base + sym["st_value"]
        regs = dict(frames[0].regs, rip=entry, rsp=frames[0].cfa - 8)
        planted = unwind_regs(s, regs)
    assert [f.pc for f in planted] == [entry] + [f.pc for f in frames[1:]]
    assert all(f.truncated is None for f in planted)
