"""Many small reads of a live process in few system calls: process_vm_readv(2) through ctypes.

pread(2) on /proc/PID/mem reads one range per call, so the first bytes of ten thousand
scattered buffers (findleaks' type hints, a slab's control records) cost ten thousand calls, or
reading every page between them. process_vm_readv takes up to IOV_MAX ranges per call and
copies each straight into its row of the caller's array. It needs the same permission as
ptrace attach, which the live target already holds. libc is loaded on first use.
"""

from __future__ import annotations

import ctypes
import errno
import functools

IOV_MAX = 1024  # ranges one call may carry (Linux's UIO_MAXIOV)


@functools.lru_cache(maxsize=1)
def _readv():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "process_vm_readv", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                       ctypes.c_ulong, ctypes.c_ulong]
        fn.restype = ctypes.c_ssize_t
    return fn


def read_rows(pid: int, addrs, size: int):
    """(rows, ok): the `size` bytes at each address (uint64 array) as an (n, size) uint8
    array, and which rows were read whole; or None when the system call is missing or
    refused (the caller then reads through /proc/PID/mem). A row the kernel could not copy
    whole (unmapped, or cut by a hole) is left zero with ok False, for the caller to read
    the slow way, which can say exactly which bytes are missing.

    A call stops at the first range it cannot copy; the rows after it go in the next call.
    The kernel may copy part of a row before it stops: that row is not ok."""
    import numpy as np

    fn = _readv()
    n = len(addrs)
    if fn is None or size <= 0:
        return None
    rows, ok = np.zeros((n, size), np.uint8), np.zeros(n, bool)
    # iovec pairs (base, length): local bases are the rows, remote bases the addresses
    local = np.empty((n, 2), np.uint64)
    local[:, 0] = rows.ctypes.data + np.arange(n, dtype=np.uint64) * np.uint64(size)
    local[:, 1] = size
    remote = np.empty((n, 2), np.uint64)
    remote[:, 0] = addrs
    remote[:, 1] = size
    lbase, rbase = local.ctypes.data, remote.ctypes.data
    i = 0
    while i < n:
        k = min(IOV_MAX, n - i)
        got = fn(pid, lbase + 16 * i, k, rbase + 16 * i, k, 0)
        if got < 0:
            err = ctypes.get_errno()
            if err == errno.ESRCH or i == 0 and err in (errno.EPERM, errno.ENOSYS):
                return None  # gone, or not allowed this way: the caller's path says which
            i += 1  # the first range is unreadable: the rest go in the next call
            continue
        whole = got // size
        ok[i:i + whole] = True
        i += whole if whole == k else whole + 1  # a row cut short stays not ok
    rows[~ok] = 0
    return rows, ok
