"""The environment a process started with, as its libc read it at start-up (glibc's tunables,
MALLOC_PERTURB_, ...), from a live process or a core alike.

The initial stack is laid out by the kernel as argc, argv[], NULL, envp[], NULL, then the
auxiliary vector, and every core writer keeps it (it is anonymous memory). The vector's
AT_RANDOM entry is found there by its value (a pointer to 16 random bytes the kernel put above
the vector; /proc/PID/auxv or the core's NT_AUXV note has it, so the 16-byte pair is unique);
walking back over the pairs whose keys the vector has leads to its start, and the words before
its NULL are envp. The pointers are followed because they are what glibc read: releases up to
2.38 parse GLIBC_TUNABLES from a copy they point envp at, after cutting the original string
at each ':' (so /proc/PID/environ, which shows the original strings, no longer says which
tunables were set). What this cannot see: a program that later replaced or removed one of
these variables with setenv/unsetenv, which edit the same array in place.
"""

from __future__ import annotations

import struct

from mdbpy.errors import ReadError

AT_SECURE = 23
AT_RANDOM = 25
MAX_VARS = 1 << 16  # envp entries followed at most
MAX_STRING = 128 << 10  # the kernel's MAX_ARG_STRLEN
VECTOR_SEARCH = 1 << 20  # bytes below AT_RANDOM's target searched for the vector
PAGE = 4096


def initial_environ(target) -> list[bytes] | None:
    """The NAME=value strings the process started with, in order; None when they cannot be
    read (no auxv or stack: a synthetic target, a core without its stack)."""
    try:
        return _from_stack(target)
    except ReadError:
        return None


def _from_stack(target) -> list[bytes] | None:
    auxv = target.auxv()
    rnd = auxv.get(AT_RANDOM)
    m = next((m for m in target.mappings() if m.contains(rnd or 0)), None) if rnd else None
    if m is None:
        return None
    lo = max(m.start, (rnd - VECTOR_SEARCH) & ~7)
    block = target.read(lo, rnd - lo)
    at = block.rfind(struct.pack("<QQ", AT_RANDOM, rnd))
    while at >= 0 and at % 8:
        at = block.rfind(struct.pack("<QQ", AT_RANDOM, rnd), 0, at + 15)
    if at < 0:
        return None
    keys = set(auxv) - {0}
    while at >= 16 and struct.unpack_from("<Q", block, at - 16)[0] in keys:
        at -= 16
    if at < 8 or struct.unpack_from("<Q", block, at - 8)[0] != 0:
        return None  # not the layout execve makes
    ptrs = []
    i = at - 16
    while i >= 0 and len(ptrs) < MAX_VARS:
        p = struct.unpack_from("<Q", block, i)[0]
        if p == 0:
            break
        ptrs.append(p)
        i -= 8
    else:
        return None  # envp's start is not in the block
    return [_cstring(target, p) for p in reversed(ptrs)]


def _cstring(target, addr: int) -> bytes:
    """The NUL-terminated string at addr (at most MAX_STRING bytes), read a page at a time so
    a string that ends just before an unmapped page is still read."""
    out = b""
    while len(out) < MAX_STRING:
        cur = addr + len(out)
        piece = target.read(cur, PAGE - cur % PAGE)
        nul = piece.find(b"\0")
        if nul >= 0:
            return out + piece[:nul]
        out += piece
    return out[:MAX_STRING]
