"""C++ reference arguments and their entry values (issue 22): gdb's bt is the oracle.

fixtures/frames_ref.cc, built with g++ -O2 -g, parks under main -> caller -> use(int &r,
const long &c, const pair &p, long n) -> park. gdb's bt shows a reference to a scalar as
`@ADDRESS: value`, its entry value the same way from the call site's DW_AT_call_value (the
address) and DW_AT_call_data_value (the referent then), compact when both are unchanged, and
a reference to a struct as `...`. mdbpy's $C, ::stack -v and ::frame show use's arguments
as gdb does (its numbers in mdb's hex), live and on a gcore core.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support import (FIXTURES, SYS_PAUSE, gcore, run_in, start_fixture, wait_syscalls)
from test_frames import ARGS, _session

GDB_USE = re.compile(r"^#\d+\s+0x[0-9a-f]+ in use \((.*)\) at ", re.M)
SHAPE = re.compile(r"r=@(0x[0-9a-f]+): 6, r@entry=@\1: 5, c=c@entry=@0x[0-9a-f]+: 7, p=\.\.\., "
                   r"n=n@entry=9")


@pytest.fixture(scope="module")
def parked(build_dir):
    """(exe, running process, its gcore core), parked in pause() under park."""
    exe = Path(build_dir) / "frames_ref"
    subprocess.run(["g++", "-g", "-O2", "-o", str(exe), str(FIXTURES / "frames_ref.cc")],
                   check=True, capture_output=True)
    r = start_fixture(exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        yield exe, r, gcore(r.pid, Path(build_dir) / "frames_ref-gcore")
    finally:
        r.stop()


def _gdb_use(where, exe, r, core) -> str:
    """The arguments gdb's bt shows for use."""
    args = ["-p", str(r.pid)] if where == "live" else [str(exe), str(core)]
    out = subprocess.run(["gdb", "-batch", "-nx", *args, "-ex", "bt"], capture_output=True,
                         text=True, timeout=120).stdout
    return GDB_USE.search(out).group(1)


def _in_hex(text: str) -> str:
    """gdb's decimal numbers in an argument list, as mdb's hex (addresses are hex already)."""
    return re.sub(r"(?<![\w.])(\d+)(?![\w.])", lambda m: hex(int(m.group(1))), text)


@pytest.mark.parametrize("where", ["live", "core"])
def test_reference_arguments_equal_gdb(where, parked):
    """r's referent changed since entry (both shown, at the same address), c's did not
    (compact), p is a struct (`...`, no entry value), n is a plain entry value: exactly
    gdb's bt, in $C, ::stack -v and ::frame."""
    exe, r, core = parked
    gdb = _gdb_use(where, exe, r, core)
    assert SHAPE.fullmatch(gdb), gdb
    with _session(where, exe, r, core) as s:
        text = run_in(s, "$C")
        assert run_in(s, "::stack -v") == text
        (n, args), = [(k, m.group(3)) for k, line in enumerate(text.splitlines())
                      if (m := ARGS.match(line)) and m.group(2) == "use"]
        assert args == _in_hex(gdb)
        assert run_in(s, f"::frame 0t{n}") == text.splitlines()[n] + "\n"


class _Bytes:
    """A value of the given bytes at address (what _same_value reads of a Value)."""

    def __init__(self, data: bytes, address: int | None = None):
        self.data, self.address = data, address

    def read_(self) -> bytes:
        return self.data


def test_null_reference_is_not_its_entry_referent():
    """A NULL reference argument is shown as the reference itself (not followed): its 8 zero
    bytes are not the same as an entry referent of 8 zero bytes; two plain values are."""
    from mdbpy.types.frames import _same_value

    zero = bytes(8)
    assert _same_value(_Bytes(zero), _Bytes(zero, 0x1000), ref=False, is_ref=True) is False
    assert _same_value(_Bytes(zero), _Bytes(zero), ref=False, is_ref=False) is True
    assert _same_value(_Bytes(zero, 0x1000), _Bytes(zero, 0x1000), ref=True, is_ref=True) is True
