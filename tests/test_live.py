"""LiveTarget against real processes: freezing, maps, memory, threads, registers, errors."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from mdbpy.errors import ReadError, TargetError, WriteError
from mdbpy.target.live import LiveTarget
from support import compile_fixture, start_fixture

NODE = 8 + 8 + 16  # struct node: next, value, tag[16]


def proc_maps(pid: int) -> list[tuple[int, int, str, str]]:
    """(start, end, perms, path) straight from /proc, the oracle for mappings()."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = parts[0].split("-")
            out.append((int(lo, 16), int(hi, 16), parts[1],
                        parts[5].strip() if len(parts) > 5 else ""))
    return out


def task_states(pid: int) -> dict[int, str]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                out[int(tid)] = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):  # a thread ended meanwhile
            continue
    return out


def wait_for_states(pid: int, letters: str) -> None:
    """Block until every thread of pid is in one of the given states (job control is
    asynchronous); bounded so a broken kernel interaction fails instead of hanging."""
    for _ in range(100000):
        states = task_states(pid)
        if states and all(s in letters for s in states.values()):
            return
        os.sched_yield()
    raise AssertionError(f"threads of {pid} never reached {letters!r}: {states}")


def mapping_of(target: LiveTarget, addr: int):
    return next(m for m in target.mappings() if m.contains(addr))


@pytest.fixture(scope="module")
def churn_exe(build_dir):
    return compile_fixture("churn", build_dir)


def test_every_thread_stopped_while_attached(basic_proc):
    with LiveTarget(basic_proc.pid) as t:
        assert set(task_states(basic_proc.pid).values()) == {"t"}
        assert basic_proc.proc_status()["TracerPid"] == str(os.getpid())
        threads = t.threads()
        assert [th.tid for th in threads][0] == basic_proc.pid
        assert sorted(th.tid for th in threads) == sorted(task_states(basic_proc.pid))
        assert [th.name for th in threads] == ["basic", "sleeper", "waiter", "reader"]
        # the state reported is the one seen before mdbpy stopped the thread
        assert all(th.state[0] in "SR" for th in threads), [th.state for th in threads]
    basic_proc.assert_untouched()


def test_mappings_equal_proc_maps(basic_proc):
    with LiveTarget(basic_proc.pid) as t:
        got = [(m.start, m.end, m.perms, m.path) for m in t.mappings()]
        assert got == proc_maps(basic_proc.pid)
        paths = {m.path for m in t.mappings()}
        assert {"[heap]", "[stack]", "[vdso]"} <= paths
        heap = next(m for m in t.mappings() if m.path == "[heap]")
        assert not heap.is_file and heap.readable and heap.writable


def test_linked_list_read_by_following_next(basic_proc):
    with LiveTarget(basic_proc.pid) as t:
        addr = basic_proc.addr("list_head")
        values, tags = [], []
        while addr and len(values) < 100:
            raw = t.read(addr, NODE)
            values.append(int.from_bytes(raw[8:16], "little"))
            tags.append(raw[16:].split(b"\0")[0].decode())
            addr = int.from_bytes(raw[:8], "little")
        assert values == [0x1000 + i for i in range(5)]
        assert tags == [f"node{i}" for i in range(5)]
        assert mapping_of(t, basic_proc.addr("list_head")).path == "[heap]"


def test_registers_of_every_thread(basic_proc, basic_exe):
    with LiveTarget(basic_proc.pid) as t:
        threads = t.threads()
        assert len(threads) == 4
        libc_or_exe = ("libc.so.6", basic_exe.name)
        for th in threads:
            code = mapping_of(t, th.regs["rip"])
            assert code.executable and os.path.basename(code.path) in libc_or_exe, code
            stack = mapping_of(t, th.regs["rsp"])
            if th.tid == basic_proc.pid:
                assert stack.path == "[stack]"
            else:  # pthread stacks are anonymous read-write mappings
                assert stack.path == "" and stack.perms == "rw-p"
            # the stack pointer points at readable memory holding the return path
            assert len(t.read(th.regs["rsp"], 64)) == 64
        fs = [th.regs["fs_base"] for th in threads]
        assert all(fs) and len(set(fs)) == 4  # one TLS block per thread


def test_block_read_of_whole_mapping_is_one_pread(basic_proc, monkeypatch):
    calls = []
    real = os.pread

    def counting(fd, n, off):
        calls.append((n, off))
        return real(fd, n, off)

    with LiveTarget(basic_proc.pid) as t:
        for m in t.mappings():
            if m.path in ("[heap]", "[stack]") or (m.path.endswith("libc.so.6") and m.executable):
                calls.clear()
                monkeypatch.setattr(os, "pread", counting)
                data = t.read(m.start, m.size)
                monkeypatch.setattr(os, "pread", real)
                assert calls == [(m.size, m.start)], m
                fd = os.open(f"/proc/{basic_proc.pid}/mem", os.O_RDONLY)
                try:
                    assert data == os.pread(fd, m.size, m.start)
                finally:
                    os.close(fd)


def test_unmapped_reads_name_the_failing_address(basic_proc):
    with LiveTarget(basic_proc.pid) as t:
        with pytest.raises(ReadError) as e:
            t.read(0x10, 8)
        assert str(e.value) == "failed to read 8 bytes at 0x10: no mapping"
        maps = t.mappings()
        # the end of a mapping followed by a gap: the error names the first byte not read
        m = next(a for a, b in zip(maps, maps[1:]) if a.end < b.start)
        with pytest.raises(ReadError) as e:
            t.read(m.end - 8, 24)
        assert (e.value.addr, e.value.size, e.value.reason) == (m.end, 16, "no mapping")
        # a wild size fails from the mappings alone, without allocating a buffer for it
        with pytest.raises(ReadError):
            t.read(m.start, 1 << 50)
        vsyscall = [x for x in maps if x.path == "[vsyscall]"]
        if vsyscall:
            with pytest.raises(ReadError, match="kernel address"):
                t.read(vsyscall[0].start, 8)


def test_scattered_rows_in_few_calls_equal_single_reads(basic_proc):
    """read_rows (process_vm_readv, up to 1024 rows a call) gives exactly what read() gives
    for every row read whole, and refuses every other row: unmapped, cut by a mapping's end,
    at address 0 or a kernel address; a refused row in the middle of a batch does not stop
    the rows after it, across more rows than one call carries."""
    import numpy as np

    with LiveTarget(basic_proc.pid) as t:
        maps = t.mappings()
        m = next(a for a, b in zip(maps, maps[1:])
                 if a.end < b.start and a.readable and a.size >= 16 << 10)
        size = 24
        good = [m.start + 8 * k for k in range(1500)]
        bad = [0, 0x10, m.end - 8, m.end, 0xffffffffff600000, (1 << 64) - 16]
        addrs = np.array(good[:700] + bad + good[700:] + bad[2:4], np.uint64)
        rows, ok = t.read_rows(addrs, size)
        assert len(addrs) > 1024 and ok.tolist() == [a not in bad for a in addrs.tolist()]
        for a, row, k in zip(addrs.tolist(), rows, ok.tolist()):
            assert row.tobytes() == (t.read(a, size) if k else bytes(size)), hex(a)


def test_facts_exe_auxv_status(basic_proc, basic_exe):
    with LiveTarget(basic_proc.pid) as t:
        assert t.kind == "live" and t.describe() == f"PID {basic_proc.pid}"
        assert t.exe_path() == str(basic_exe)
        auxv = t.auxv()
        assert auxv[6] == os.sysconf("SC_PAGE_SIZE")  # AT_PAGESZ
        assert mapping_of(t, auxv[9]).path == str(basic_exe)  # AT_ENTRY lies in the exe
        assert mapping_of(t, auxv[33]).path == "[vdso]"  # AT_SYSINFO_EHDR
        assert t.status_lines() == [
            f"debugging PID {basic_proc.pid} (64-bit)",
            f"file: {basic_exe}",
            f"initial argv: {basic_exe}",
            "threading model: native threads",
            "status: process is stopped by mdbpy",
        ]


def test_nostop_reads_without_stopping(basic_proc):
    with LiveTarget(basic_proc.pid, stop=False) as t:
        assert basic_proc.proc_status()["TracerPid"] == "0"
        assert not set(task_states(basic_proc.pid).values()) & {"t", "T"}
        raw = t.read(basic_proc.addr("list_head"), NODE)
        assert raw[16:21] == b"node0"
        threads = t.threads()
        assert len(threads) == 4
        with pytest.raises(TargetError, match="not available with -o nostop"):
            threads[0].regs["rip"]
        assert t.status_lines()[-1] == "status: process is running (-o nostop)"
    basic_proc.assert_untouched()


def test_writes_only_when_writable(basic_proc):
    value_at = basic_proc.addr("list_head") + 8
    with LiveTarget(basic_proc.pid) as t:
        with pytest.raises(WriteError, match="read-only"):
            t.write(value_at, b"\0" * 8)
    with LiveTarget(basic_proc.pid, writable=True) as t:
        old = t.read(value_at, 8)
        t.write(value_at, (0xfeed).to_bytes(8, "little"))
        assert t.read(value_at, 8) == (0xfeed).to_bytes(8, "little")
        t.write(value_at, old)  # put it back so the checksum proves nothing else changed
        with pytest.raises(WriteError, match="no mapping"):
            t.write(0x10, b"x")
    basic_proc.assert_untouched()


def test_close_is_idempotent_and_leaves_process_untouched(basic_proc):
    t = LiveTarget(basic_proc.pid)
    t.threads()
    t.close()
    t.close()
    basic_proc.assert_untouched()
    with pytest.raises(TargetError, match="no longer attached"):
        t.read(basic_proc.addr("list_head"), 8)
    # and it can be attached again afterwards
    with LiveTarget(basic_proc.pid) as t2:
        assert len(t2.threads()) == 4
    basic_proc.assert_untouched()


def test_release_and_kill(basic_proc, basic_exe):
    t = LiveTarget(basic_proc.pid)
    t.release()
    basic_proc.assert_untouched()
    with pytest.raises(TargetError, match=f"no process active: process {basic_proc.pid} was "
                                          f"released"):
        t.read(basic_proc.addr("list_head"), 8)

    t = LiveTarget(basic_proc.pid)
    t.release(leave_stopped=True)
    wait_for_states(basic_proc.pid, "T")
    assert basic_proc.proc_status()["TracerPid"] == "0"
    os.kill(basic_proc.pid, signal.SIGCONT)
    basic_proc.assert_untouched()

    t = LiveTarget(basic_proc.pid)
    t.kill()
    assert not os.path.exists(f"/proc/{basic_proc.pid}/task")  # the exit was collected
    with pytest.raises(TargetError, match="was killed"):
        t.mappings()


def test_already_group_stopped_process_is_left_stopped(basic_proc):
    os.kill(basic_proc.pid, signal.SIGSTOP)
    wait_for_states(basic_proc.pid, "T")
    with LiveTarget(basic_proc.pid) as t:
        assert set(task_states(basic_proc.pid).values()) == {"t"}
        assert "already stopped by job control" in t.status_lines()[-1]
        assert t.read(basic_proc.addr("list_head") + 16, 5) == b"node0"
    wait_for_states(basic_proc.pid, "T")  # back in the job-control stop, not running
    assert basic_proc.proc_status()["TracerPid"] == "0"
    os.kill(basic_proc.pid, signal.SIGCONT)
    basic_proc.assert_untouched()


def test_threads_created_and_exiting_while_attaching(churn_exe):
    r = start_fixture(churn_exe)
    try:
        for _ in range(20):
            with LiveTarget(r.pid) as t:
                states = task_states(r.pid)
                assert set(states.values()) <= {"t", "Z", "X"}, states
                tids = {th.tid for th in t.threads()}
                assert len(tids) >= 5 and r.pid in tids
                for th in t.threads():
                    assert th.regs["rip"] > 0
            r.assert_untouched()
    finally:
        r.stop()


def test_process_not_found():
    p = subprocess.Popen(["true"])
    p.wait()  # reaped: the pid is free
    with pytest.raises(TargetError) as e:
        LiveTarget(p.pid)
    assert str(e.value) == f"process {p.pid} not found"


def test_zombie_is_refused():
    p = subprocess.Popen(["true"])
    try:
        for _ in range(100000):  # wait for the exit without reaping it
            with open(f"/proc/{p.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            os.sched_yield()
        with pytest.raises(TargetError, match=f"process {p.pid} is a zombie"):
            LiveTarget(p.pid)
    finally:
        p.wait()


def test_kernel_thread_is_refused():
    pf_kthread = 0x00200000
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                flags = int(f.read().rsplit(")", 1)[1].split()[6])
        except (OSError, ValueError, IndexError):
            continue
        if flags & pf_kthread:
            break
    else:
        pytest.skip("no kernel thread visible in this pid namespace")
    with pytest.raises(TargetError) as e:
        LiveTarget(int(name), stop=False)
    assert str(e.value) == f"process {name} is a kernel thread; mdbpy debugs user processes"


def test_nostop_process_exiting_mid_session(basic_proc):
    with LiveTarget(basic_proc.pid, stop=False) as t:
        basic_proc.proc.kill()
        basic_proc.proc.wait()  # reaped by its parent: /proc/PID is gone
        with pytest.raises(TargetError) as e:
            t.read(basic_proc.addr("list_head"), 8)
        assert str(e.value) == f"process {basic_proc.pid} has exited"


def test_thread_id_names_its_process(basic_proc):
    tid = max(task_states(basic_proc.pid))
    with pytest.raises(TargetError) as e:
        LiveTarget(tid)
    assert str(e.value) == (f"{tid} is a thread of process {basic_proc.pid}; "
                            f"use -p {basic_proc.pid}")


def test_already_traced_names_the_tracer(basic_proc):
    with LiveTarget(basic_proc.pid):
        with pytest.raises(TargetError) as e:
            LiveTarget(basic_proc.pid)
        msg = str(e.value)
        assert msg.startswith(f"process {basic_proc.pid} is already traced by process "
                              f"{os.getpid()} (")
        assert "\n" not in msg
    basic_proc.assert_untouched()


def test_permission_denied_says_how_to_fix(basic_proc):
    """An unprivileged user may not attach to root's process: the message names the fixes."""
    if os.getuid() != 0:
        pytest.skip("needs root to make the attempt as another user")
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # become nobody, try, report the message through the pipe
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            LiveTarget(basic_proc.pid)
            os.write(wfd, b"attached")
        except TargetError as e:
            os.write(wfd, str(e).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        msg = f.read().decode()
    os.waitpid(child, 0)
    assert msg == (
        f"permission denied to read the memory of process {basic_proc.pid}: run mdbpy as the "
        f"same user, check /proc/sys/kernel/yama/ptrace_scope (set 0) or grant CAP_SYS_PTRACE")
    basic_proc.assert_untouched()


def test_process_exiting_mid_session(basic_proc):
    t = LiveTarget(basic_proc.pid)
    try:
        head = basic_proc.addr("list_head")
        assert t.read(head + 16, 5) == b"node0"
        os.kill(basic_proc.pid, signal.SIGKILL)
        wait_for_states(basic_proc.pid, "ZX")
        with pytest.raises(TargetError) as e:
            t.read(head, 8)
        assert str(e.value) == f"process {basic_proc.pid} has exited"
        with pytest.raises(TargetError, match="has exited"):
            t.threads()
        with pytest.raises(TargetError, match="has exited"):
            t.mappings()
        assert t.status_lines()[-1] == f"status: process {basic_proc.pid} has exited"
    finally:
        t.close()
    t.close()
