"""$r, ::threads, ::thread and the register variables, against gdb and /proc.

gdb's `info registers` on the same core is the oracle for every value $r prints, thread by
thread; the live process's /proc/PID/task lists the threads ::threads must show.
"""

from __future__ import annotations

import os
import re
import subprocess

from support import run_mdbpy

# $r's names for what gdb (and Linux's user_regs_struct) call otherwise
GDB_NAMES = {"rflags": "eflags", "fsbase": "fs_base", "gsbase": "gs_base"}
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15")
SHOWN = set(GPRS) | {"rip", "rflags", "cs", "ds", "es", "fs", "gs", "ss", "fsbase", "gsbase"}


def gdb_registers(exe, core) -> dict[int, dict[str, int]]:
    """{tid: {register: value}} from gdb's `info registers` (plus fs_base and gs_base, which
    it lists only when asked) for every thread of the core."""
    out = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "thread apply all info registers",
         "-ex", "thread apply all info registers fs_base gs_base", str(exe), str(core)],
        capture_output=True, text=True, timeout=120, check=True).stdout
    regs: dict[int, dict[str, int]] = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"Thread \d+ \(.*\(LWP (\d+)\)\)", line)
        if m:
            cur = regs.setdefault(int(m.group(1)), {})
            continue
        m = re.match(r"(\w+)\s+0x([0-9a-f]+)\s", line)
        if m and cur is not None:
            cur[m.group(1)] = int(m.group(2), 16)
    return regs


def gdb_flags(exe, core) -> dict[int, set[str]]:
    """{tid: the eflags status names gdb lists as set}."""
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex", "thread apply all info registers eflags",
                          str(exe), str(core)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    tids = [int(t) for t in re.findall(r"\(LWP (\d+)\)\):", out)]
    sets = [set(s.split()) for s in re.findall(r"eflags\s+0x[0-9a-f]+\s+\[(.*)\]", out)]
    return dict(zip(tids, sets))


def printed_registers(text: str) -> dict[str, int]:
    return {name: int(v, 16) for name, v in re.findall(r"%(\w+)\s*= 0x([0-9a-f]+)", text)}


def test_regs_equal_gdb(stacks_parked, stacks_exe):
    r, core = stacks_parked
    want = gdb_registers(stacks_exe, core)
    flags = gdb_flags(stacks_exe, core)
    assert sorted(want) == sorted([r.pid, int(r.info["reader"]), int(r.info["signalled"])])
    for tid, gdb in want.items():
        res = run_mdbpy(core, "-e", f"0t{tid}::thread; $r")
        assert res.returncode == 0 and res.stderr == "", res.stderr
        shown = printed_registers(res.stdout)
        assert set(shown) == SHOWN
        for name, value in shown.items():
            assert value == gdb[GDB_NAMES.get(name, name)], (tid, name)
        status = re.search(r"status=<(.*)>", res.stdout).group(1).split(",")
        assert {s for s in status if s.isupper()} == flags[tid]
        # tid$r is the same without selecting the thread
        assert run_mdbpy(core, "-e", f"0t{tid}$r").stdout == res.stdout


def test_regs_layout(stacks_parked):
    """mdb's amd64 $r shape: register pairs, segment registers, rip with its symbol."""
    r, core = stacks_parked
    lines = run_mdbpy(core, "-e", "$r").stdout.splitlines()
    assert re.fullmatch(r"%rax = 0x[0-9a-f]{16}\t%r8  = 0x[0-9a-f]{16}", lines[0])
    assert re.fullmatch(r" {25}\t%r14 = 0x[0-9a-f]{16}", lines[6])
    assert lines[9].startswith("%cs = 0x0033\t%fs = 0x")
    assert re.fullmatch(r"%rip = 0x[0-9a-f]{16} libc\.so\.6`pause\+0x[0-9a-f]+", lines[12])
    assert re.fullmatch(r"  id=0 vip=0 vif=0 ac=0 vm=0 rf=0 nt=0 iopl=0x0", lines[17])


HEADER = "     TID NAME             STATE            PC"


def threads_tables(text: str) -> list[dict[int, tuple[bool, str, str]]]:
    """[{tid: (current, name, pc)}] for each ::threads table in the output."""
    tables = []
    for line in text.splitlines():
        if line == HEADER:
            tables.append({})
            continue
        if not tables:
            continue  # output of other commands before the table
        m = re.fullmatch(r"([ *])\s*(\d+) (\S+)\s+.*\s(\S+)", line)
        tables[-1][int(m.group(2))] = (m.group(1) == "*", m.group(3), m.group(4))
    return tables


def test_threads_live(stacks_parked):
    r, _ = stacks_parked
    reader = int(r.info["reader"])
    res = run_mdbpy("-p", r.pid, "-e", f"::threads; 0t{reader}::thread; ::threads")
    assert res.returncode == 0, res.stderr
    before, after = threads_tables(res.stdout)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{r.pid}/task"))
    assert sorted(before) == sorted(after) == tids
    assert before[r.pid][:2] == (True, "stacks") and before[reader][:2] == (False, "reader")
    assert after[r.pid][0] is False and after[reader][0] is True
    assert before[r.pid][2].startswith("libc.so.6`pause+0x")
    r.assert_untouched()


def test_threads_core(stacks_parked, stacks_exe):
    r, core = stacks_parked
    (table,) = threads_tables(run_mdbpy(core, "-e", "::threads").stdout)
    assert sorted(table) == sorted(gdb_registers(stacks_exe, core))
    res = run_mdbpy(core, "-e", f"::threads | ::grep '.==0t{r.pid}'")
    assert res.stdout == f"{r.pid:x}\n"  # piped, ::threads passes the tids on


def test_thread_selection_and_register_variables(stacks_parked, stacks_exe):
    r, core = stacks_parked
    want = gdb_registers(stacks_exe, core)
    for tid, gdb in want.items():
        res = run_mdbpy(core, "-e", f"0t{tid}::thread; <rip=K; <rsp=K; <rflags=K; ::thread")
        assert res.returncode == 0, res.stderr
        out = res.stdout.split()
        assert [int(v, 16) for v in out[:3]] == [gdb["rip"], gdb["rsp"], gdb["eflags"]]
        (table,) = threads_tables(res.stdout)
        assert list(table) == [tid] and table[tid][0] is True
    # the read-only variable `thread` is the selected thread's id
    tid = sorted(want)[-1]
    res = run_mdbpy(core, "-e", f"0t{tid}::thread; <thread=D; ::vars ! grep '^thread'")
    assert res.stdout.split() == [str(tid), "thread", "=", f"{tid:x}"], res.stderr
    res = run_mdbpy(core, "-e", "1>thread")
    assert res.returncode == 1
    assert res.stderr == ("mdbpy: variable 'thread' is read-only (select a thread with "
                          "tid::thread)\n")


def test_unknown_thread_is_one_line_error(stacks_parked):
    _, core = stacks_parked
    res = run_mdbpy(core, "-e", "0t99999999::thread")
    assert res.returncode == 1
    assert res.stderr == "mdbpy: no thread 0x5f5e0ff (0t99999999) in this target: see ::threads\n"
