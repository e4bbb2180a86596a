"""Post-mortem targets: ELF core files (CoreTarget) and executables or libraries on their own
(FileTarget), opened by open_file_target() for `mdbpy core`, `mdbpy exe core` and `mdbpy exe`.

Both read through an mmap of the file, never a copy of it. A core is untrusted input: every
count, size and offset in it is checked against the file's real size, so a truncated or
hostile core opens as a one-line TargetError or as a usable partial target (the damage listed
in `warnings`), and a segment that claims terabytes costs nothing until someone reads it.

Pages a core left out (text and read-only data of mapped files, which the kernel and gdb omit
by default) are read from the mapped file on disk, found through NT_FILE and `--sysroot`, but
only when that file's build-id equals the one in the core's own copy of the file's first page;
otherwise those pages stay unreadable and a warning says why.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import signal
import stat
import threading
from contextlib import contextmanager

from mdbpy.errors import ReadError, TargetError, WriteError
from mdbpy.target import elfcore as ec
from mdbpy.target.base import Mapping, Target, Thread, signal_name

MAX_PHDRS = 1 << 18  # far above any real process (vm.max_map_count is 65530 by default)
MAX_FILES = 1 << 18
MAX_NOTES = 1 << 20  # a core of 65,000 threads holds about 400,000
MAX_THREADS = 1 << 16  # NT_PRSTATUS notes kept (each thread costs ~2 KB of registers)
MAX_DISK_FILES = 4096  # distinct mapped files looked up on disk for pages a core left out
NOT_IN_CORE = "not in core file"
# Reads this big come through pread(2), not the mmap: pages touched through a mapping count in
# mdbpy's RSS until unmapped, so scanning a 4 GiB core through it would hold 4 GiB.
PREAD_MIN = 64 << 10
# Pages of the image that mapped() and warm() leave mapped: a heap up to this size keeps its
# pages after the scan (no unmapping cost, and the leak records read next find them mapped);
# past it, each block's pages are dropped as it ends, so RSS stays bounded. Counted in units,
# each once however often it is lent.
RESIDENT_BUDGET = 1 << 30
RESIDENT_UNIT = 1 << 20
WARM_STEP = 16 << 20  # warm() reads this much at a time, checking between steps for close()
# What an x86_64 process can map: user space below 2**56 (2**47 without 5-level paging), and the
# kernel half from 0xff00000000000000 to below its last page, of which a core holds at most the
# vsyscall page. A segment is cut at the end of the half it starts in (so every end fits in 64
# bits); one starting in neither is dropped.
USER_END = 1 << 56
KERNEL_START = 0xFF00000000000000
KERNEL_END = (1 << 64) - ec.PAGE


class _Segment:
    """[start, end) of the target; its first `avail` bytes are in the image at `off`.

    claimed: the bytes the header says the image holds (more than avail if truncated);
    path, foff: the mapped file and the offset in it of `start`, when known.
    """

    __slots__ = ("start", "end", "perms", "off", "avail", "claimed", "path", "foff")

    def __init__(self, start: int, end: int, perms: str, off: int = 0, avail: int = 0,
                 claimed: int = 0, path: str = "", foff: int = 0):
        self.start, self.end, self.perms = start, end, perms
        self.off, self.avail, self.claimed = off, avail, claimed
        self.path, self.foff = path, foff

    def mapping(self) -> Mapping:
        return Mapping(self.start, self.end, self.perms, self.foff if self.path else 0,
                       path=self.path)


def _clip_overlaps(segs: list[_Segment], clipped: list | None = None) -> list[_Segment]:
    """Sort segments and cut them so no address is claimed twice (only hostile files overlap;
    the start of each overlapping segment is appended to `clipped` when a list is given). A
    segment that reaches into the next with no bytes of its own there (a p_memsz grown over
    its neighbours) ends where the next begins; otherwise the first claim wins and the later
    segment is cut where the one before it ends."""
    out: list[_Segment] = []
    for s in sorted(segs, key=lambda s: (s.start, s.end)):
        if out and s.start < out[-1].end and clipped is not None:
            clipped.append(out[-1].start)
        if out and out[-1].start + out[-1].avail <= s.start < out[-1].end:
            prev = out.pop()
            if s.start > prev.start:
                prev.end = s.start
                prev.claimed = min(prev.claimed, prev.end - prev.start)
                out.append(prev)
        if out and s.start < out[-1].end:
            cut = out[-1].end - s.start
            if cut >= s.end - s.start:
                continue
            s.start += cut
            s.off += cut
            s.foff += cut
            s.avail = max(0, s.avail - cut)
            s.claimed = max(0, s.claimed - cut)
        out.append(s)
    return out


def _printable(path: str) -> str:
    """A path a core names, as a message shows it: characters that are not printable (a
    newline would split the one-line message) escaped as Python writes them."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in path)


def _open_regular(path: str, mode: str = "rb"):
    """open() for regular files only: a FIFO or device named by a hostile core (or a user's
    typo) would block or never end. Raises OSError."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    return open(path, mode)


def _open_image(path: str, writable: bool):
    """(file object, mmap, size) of a file, or a one-line TargetError naming it."""
    try:
        f = _open_regular(path, "r+b" if writable else "rb")
    except OSError as e:
        raise TargetError(f"cannot open {path}: {e.strerror}") from None
    try:
        size = os.fstat(f.fileno()).st_size
        if size < ec.EHDR.size:
            raise TargetError(f"{path}: not an ELF file (only {size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable else
                       mmap.ACCESS_READ)
    except OSError as e:
        f.close()
        raise TargetError(f"cannot map {path}: {e.strerror}") from None
    except BaseException:
        f.close()
        raise
    return f, mm, size


class _ImageTarget(Target):
    """A target whose memory is segments of one mmapped file; subclasses say what the bytes
    past a segment's image are (zeros for bss, the mapped file for a core) via _missing()."""

    def __init__(self, path: str, writable: bool = False):
        self.path = path
        self.writable = writable
        self.warnings: list[str] = []
        self._file, self._mm, self.file_size = _open_image(path, writable)
        self._segs: list[_Segment] = []
        self._starts: list[int] = []
        self._seg_columns = None  # (starts, avail, off) as arrays, for read_rows
        self.resident_budget = RESIDENT_BUDGET
        self._kept: set[int] = set()  # file offsets // RESIDENT_UNIT left mapped
        self._kept_lock = threading.Lock()  # mapped() is entered from the scan's threads
        self._warming: threading.Thread | None = None
        self._closing = threading.Event()

    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def _loads(self, phdrs: list[ec.Phdr]) -> list[tuple[ec.Phdr, int]]:
        """(header, end) of each PT_LOAD that maps memory, its end cut to the half of the
        address space it starts in (see USER_END); one starting in neither is dropped. Each
        kind of damage is one warning, naming the first segment it hit."""
        out, cut, dropped = [], [], []
        for ph in phdrs:
            if ph.type != ec.PT_LOAD or ph.memsz == 0:
                continue
            limit = USER_END if ph.vaddr < USER_END else KERNEL_END
            if USER_END <= ph.vaddr < KERNEL_START or ph.vaddr >= KERNEL_END:
                dropped.append(ph)
                continue
            if ph.vaddr + ph.memsz > limit:
                cut.append(ph)
            out.append((ph, min(ph.vaddr + ph.memsz, limit)))
        for bad, what in ((cut, "past the end of the address space; cut there"),
                          (dropped, "at an address no process can map; ignored")):
            if bad:
                more = f" ({len(bad) - 1} more like it)" if len(bad) > 1 else ""
                self._warn(f"{self.describe()}: segment at 0x{bad[0].vaddr:x} claims "
                           f"0x{bad[0].memsz:x} bytes {what}{more}")
        return out

    def _header(self) -> ec.ElfHeader:
        err = ec.check_ident(self._mm[:16])
        if err:
            raise TargetError(f"{self.path}: {err}")
        try:
            eh = ec.parse_ehdr(self._mm[:ec.EHDR.size])
        except ValueError as e:
            raise TargetError(f"{self.path}: {e}") from None
        if eh.machine != ec.EM_X86_64:
            raise TargetError(f"{self.path}: ELF machine {eh.machine} is not x86_64")
        return eh

    def _phdrs(self, eh: ec.ElfHeader) -> list[ec.Phdr]:
        """The program headers, all inside the file, or a TargetError saying what is wrong."""
        try:
            count = ec.phdr_count(eh, self._slice)
        except ValueError as e:
            raise TargetError(f"{self.path}: {e}") from None
        if count > MAX_PHDRS:
            raise TargetError(f"{self.path}: {count} program headers is not credible")
        if eh.phoff + count * ec.PHDR.size > self.file_size:
            raise TargetError(f"{self.path}: truncated: program headers end past the end of the "
                              f"file ({self.file_size} bytes)")
        return ec.parse_phdrs(self._mm[eh.phoff:eh.phoff + count * ec.PHDR.size], count)

    def _slice(self, off: int, n: int) -> bytes:
        """Up to n bytes of the file at off (fewer at its end, none past it)."""
        if off >= self.file_size or n <= 0:
            return b""
        return self._mm[off:min(off + n, self.file_size)]

    def _set_segments(self, segs: list[_Segment]) -> None:
        self._segs = _clip_overlaps(segs)
        self._starts = [s.start for s in self._segs]
        self._seg_columns = None

    def _locate(self, addr: int) -> _Segment | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._segs[i].end:
            return self._segs[i]
        return None

    # -- Target ---------------------------------------------------------------------------
    def mappings(self) -> list[Mapping]:
        return [s.mapping() for s in self._segs]

    def read(self, addr: int, size: int) -> bytes:
        seg = self._locate(addr)
        if seg is not None and addr + size <= seg.start + seg.avail:  # the common case
            return self._image(seg.off + addr - seg.start, size)
        out = bytearray()
        cur, end = addr, addr + size
        while cur < end:
            seg = self._locate(cur)
            if seg is None:
                raise ReadError(cur, end - cur, "no mapping")
            n = min(end, seg.end) - cur
            rel = cur - seg.start
            if rel < seg.avail:
                n = min(n, seg.avail - rel)
                out += self._image(seg.off + rel, n)
            elif rel < seg.claimed:
                raise ReadError(cur, end - cur, "core file is truncated",
                                until=seg.start + seg.claimed)
            else:
                chunk = self._missing(seg, cur, n)
                n = len(chunk)
                out += chunk
            cur += n
        return bytes(out)

    def image_ranges(self) -> list[tuple[int, int, int]]:
        """(start, end, offset in the file) of the bytes each readable segment's image holds,
        for code that reads the file itself (mdbpy.heap.gather's compiled reads, through
        image_fd()): past a segment's image the bytes are _missing()'s, which only read()
        knows."""
        return [(s.start, s.start + s.avail, s.off) for s in self._segs
                if s.avail and s.perms[:1] == "r"]

    def image_fd(self) -> int:
        """A new descriptor of the file this target has open (the caller closes it): the
        bytes image_ranges() places, whatever is at the path by now. OSError once closed."""
        if self._mm is None:
            raise OSError("the target is closed")
        return os.dup(self._file.fileno())

    @contextmanager
    def mapped(self, addr: int, size: int):
        """[addr, addr + size) straight from the mapped file when one segment's image holds
        it: findleaks scans a core's heap in place instead of copying it. When the block ends
        its pages stay mapped while the blocks kept total at most resident_budget bytes; past
        that they are dropped from the mapping (MADV_DONTNEED: the page cache keeps them, the
        file is unchanged), so scanning a 4 GiB core does not hold 4 GiB in mdbpy's RSS."""
        seg = self._locate(addr)
        if self._mm is None or seg is None or addr + size > seg.start + seg.avail:
            yield None
            return
        off = seg.off + addr - seg.start
        view = memoryview(self._mm)[off:off + size]
        try:
            yield view
        finally:
            view.release()
            lo, hi = -(-off // mmap.PAGESIZE) * mmap.PAGESIZE, (off + size) // mmap.PAGESIZE * \
                mmap.PAGESIZE
            if hi > lo and not self._keep(lo, hi - lo):
                # only whole pages of the block: a neighbour's may be in use
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def _keep(self, off: int, size: int) -> bool:
        """Whether the pages of the file's [off, off + size) may stay mapped: yes while
        everything kept fits in resident_budget."""
        units = range(off // RESIDENT_UNIT, -(-(off + size) // RESIDENT_UNIT))
        with self._kept_lock:
            new = [u for u in units if u not in self._kept]
            if (len(self._kept) + len(new)) * RESIDENT_UNIT > self.resident_budget:
                return False
            self._kept.update(new)
            return True

    def warm(self, ranges) -> None:
        """Map the image's pages of these [start, end) ranges in a background thread, as far
        as the resident budget allows (a range that would pass it is left alone): the scan
        that follows then finds them mapped, and the faults were taken on the other CPU while
        the caller built what the scan needs. One warming runs at a time."""
        if self._mm is None or (self._warming is not None and self._warming.is_alive()):
            return
        spans = []
        for seg, a, b in self._overlaps(ranges):
            b = min(b, seg.start + seg.avail)
            lo = (seg.off + a - seg.start) // mmap.PAGESIZE * mmap.PAGESIZE
            hi = seg.off + b - seg.start
            if a < b and self._keep(lo, hi - lo):
                spans.append((lo, hi))
        if spans:
            self._warming = threading.Thread(target=self._populate, args=(spans,),
                                             name="mdbpy-warm", daemon=True)
            self._warming.start()

    def _overlaps(self, ranges):
        """(segment, start, end) of each part of these [start, end) ranges a segment holds."""
        segs = self._segs
        for start, end in ranges:
            # by index, not a slice: a copy of the segments after each of tens of thousands
            # of ranges (a umem heap's spans) costs more than the walk
            for j in range(max(bisect.bisect_right(self._starts, start) - 1, 0), len(segs)):
                seg = segs[j]
                if seg.start >= end:
                    break
                if seg.end > start:
                    yield seg, max(start, seg.start), min(end, seg.end)

    def present(self, ranges) -> list[tuple[int, int]]:
        """The parts of these ranges that segments can yield bytes for (see Target.present): a
        segment that claims a terabyte and holds a page costs a scan one page."""
        return [(max(a, lo), min(b, hi)) for seg, a, b in self._overlaps(ranges)
                for lo, hi in self._data(seg) if max(a, lo) < min(b, hi)]

    def _data(self, seg: _Segment) -> list[tuple[int, int]]:
        """The [start, end) pieces of a segment reads can yield bytes for: all of it here (past
        its image, _missing() gives zeros); a core says otherwise."""
        return [(seg.start, seg.end)]

    def _populate(self, spans) -> None:
        """warm()'s thread: it reads a word of every page, a step at a time, so that close()
        need not wait for a whole cold read from the disk. Faulting the pages in (numpy
        releases the GIL) rather than MADV_POPULATE_READ, which holds the address space's lock
        and so stalls every allocation the caller makes meanwhile. A step not in the page
        cache is first asked of the disk as a whole (POSIX_FADV_WILLNEED, a step ahead): page
        faults alone would read a cold file in small pieces around each fault, while the
        scan's threads fault elsewhere in it."""
        import numpy as np

        steps = [(at, min(WARM_STEP, hi - at)) for lo, hi in spans
                 for at in range(lo, hi - 7, WARM_STEP)]
        try:
            self._read_ahead(*steps[0])
            for k, (at, size) in enumerate(steps):
                if self._closing.is_set():
                    return
                for ahead in steps[k + 1:k + 2]:
                    self._read_ahead(*ahead)
                words = np.frombuffer(self._mm, np.uint64, count=size // 8, offset=at)
                words[::mmap.PAGESIZE // 8].sum()
                del words  # an exported buffer would keep the mmap from closing
        except (OSError, ValueError):  # closed under it
            pass

    def _read_ahead(self, off: int, size: int) -> None:
        """Have the kernel read the file's [off, off + size) from the disk now, in large
        requests, unless its first and last pages are already cached (a probe that never
        waits; where the file system cannot answer it, the range is read ahead anyway)."""
        fd, probe = self._file.fileno(), bytearray(1)
        try:
            for at in (off, off + size - 1):
                os.preadv(fd, [probe], at, os.RWF_NOWAIT)
            return
        except OSError:
            pass
        os.posix_fadvise(fd, off, size, os.POSIX_FADV_WILLNEED)

    def read_rows(self, addrs, size: int):
        """The rows whose bytes lie in one segment's image, cut from the mapped file in one
        numpy step: ten thousand leak records cost one gather instead of ten thousand reads.
        Rows that cross a segment or fall in no image are left to the caller (ok False)."""
        import numpy as np

        n = len(addrs)
        rows, ok = np.zeros((n, size), np.uint8), np.zeros(n, bool)
        if self._mm is None or not self._segs or not n or size <= 0:
            return rows, ok
        if self._seg_columns is None:  # made once: a libumem core has tens of thousands
            self._seg_columns = tuple(np.array(c, np.uint64) for c in zip(
                *((s.start, s.avail, s.off) for s in self._segs)))
        starts, avails, offs = self._seg_columns
        i = np.searchsorted(starts, addrs, side="right").astype(np.int64) - 1
        seg = np.maximum(i, 0)
        rel = addrs - starts[seg]  # wraps for i == -1: refused below
        avail = avails[seg]
        ok[:] = (i >= 0) & (rel < avail) & (avail - rel >= np.uint64(size))
        off = offs[seg] + rel
        image = np.frombuffer(self._mm, np.uint8)
        try:
            rows[ok] = np.lib.stride_tricks.sliding_window_view(image, size)[off[ok]]
        finally:
            del image  # an exported buffer would keep the mmap from closing
        return rows, ok

    def _image(self, off: int, n: int) -> bytes:
        """n bytes of the file at off (inside it: segments are clipped to the file's size)."""
        if n < PREAD_MIN:
            return self._mm[off:off + n]
        data = b""
        try:
            while len(data) < n:  # one call returns at most ~2 GiB
                got = os.pread(self._file.fileno(), n - len(data), off + len(data))
                if not got:
                    raise TargetError(f"{self.path}: the file shrank while open")
                data = got if not data else data + got
        except OSError as e:
            raise TargetError(f"{self.path}: read failed: {e.strerror}") from None
        return data

    def _missing(self, seg: _Segment, addr: int, n: int) -> bytes:
        """Bytes at [addr, addr+n) of seg that its image does not hold (at least one byte)."""
        raise NotImplementedError

    def write(self, addr: int, data: bytes) -> None:
        """Writes go into the file's image bytes (with -w); nothing else can be written."""
        if not self.writable:
            super().write(addr, data)
        pieces = []
        cur, end = addr, addr + len(data)
        while cur < end:
            seg = self._locate(cur)
            rel = cur - seg.start if seg else 0
            if seg is None or rel >= seg.avail:
                raise WriteError(cur, end - cur, "no mapping" if seg is None else
                                 "not in the file's image")
            n = min(end - cur, seg.avail - rel)
            pieces.append((seg.off + rel, cur - addr, n))
            cur += n
        for off, at, n in pieces:
            self._mm[off:off + n] = data[at:at + n]

    def close(self) -> None:
        if self._warming is not None:
            self._closing.set()
            self._warming.join()
            self._warming = None
        if self._mm is not None:
            self._mm.close()
            self._file.close()
            self._mm = None


class FileTarget(_ImageTarget):
    """An executable or shared object on its own: its PT_LOAD segments at their p_vaddr, file
    bytes then zeros (bss), with no threads, so `mdbpy ./prog -e 'main/4X'` reads the file."""

    kind = "file"

    def __init__(self, path: str, writable: bool = False):
        super().__init__(path, writable)
        try:
            eh = self._header()
            self.etype = eh.type
            segs = []
            for ph, end in self._loads(self._phdrs(eh)):
                delta = ph.vaddr % ec.PAGE
                start = ph.vaddr - delta
                end = -(-end // ec.PAGE) * ec.PAGE
                off = max(ph.offset - delta, 0)
                have = max(0, min(ph.filesz + delta, self.file_size - off))
                segs.append(_Segment(start, end, ec.perms_from_flags(ph.flags), off, have,
                                     have, os.path.abspath(path), off))
            self._set_segments(segs)
        except BaseException:
            self.close()
            raise

    def _missing(self, seg: _Segment, addr: int, n: int) -> bytes:
        return bytes(n)  # bss, and the rest of the last page

    def exe_path(self) -> str | None:
        return os.path.abspath(self.path)

    def describe(self) -> str:
        return f"object file {self.path}"

    def status_lines(self) -> list[str]:
        what = "executable" if self.etype == ec.ET_EXEC else "object"
        return [f"debugging {what} file (64-bit)", f"executable file: {self.path}",
                "status: idle"]


class _DiskFile:
    """A file a core maps, as found on this machine, and whether its bytes may stand in for
    pages the core left out (`mm` is set only when the build-id check passed)."""

    def __init__(self, path: str, mm: mmap.mmap | None, size: int):
        self.path = path
        self.mm = mm
        self.size = size
        self.loads: list[ec.Phdr] | None = None  # its PT_LOADs, read on first use


class CoreTarget(_ImageTarget):
    """An ELF core file (kernel, gdb's gcore, or mdbpy's ::gcore)."""

    kind = "core"

    def __init__(self, path: str, exe: str | None = None, sysroot: str | None = None,
                 writable: bool = False):
        super().__init__(path, writable)
        self.sysroot = sysroot
        self.exe = exe
        self.psinfo: ec.PsInfo | None = None
        self.siginfo: ec.SigInfo | None = None
        self._threads: list[Thread] = []
        self._cursig: list[int] = []
        self._auxv: dict[int, int] = {}
        self.files: list[ec.FileEntry] = []
        self._file_starts: list[int] = []
        self._entries_of: dict[str, list[ec.FileEntry]] = {}
        self._disk: dict[str, _DiskFile] = {}
        self._names: dict[tuple[int, int], str] | None = None  # from mdbpy's own note
        try:
            eh = self._header()
            if eh.type != ec.ET_CORE:
                raise TargetError(f"{path}: not a core file (ELF type {eh.type})")
            phdrs = self._phdrs(eh)
            self._read_notes([p for p in phdrs if p.type == ec.PT_NOTE])
            self._build_segments(self._loads(phdrs))
        except BaseException:
            self.close()
            raise

    # -- parsing --------------------------------------------------------------------------
    def _read_notes(self, notes: list[ec.Phdr]) -> None:
        """The notes of every PT_NOTE segment, parsed in place through a view of the mapping
        (a hostile note segment may claim the whole file) and at most MAX_NOTES of them
        (zeroed bytes read as a stream of empty notes)."""
        seen = 0
        with memoryview(self._mm) as image:
            for ph in notes:
                if ph.offset + ph.filesz > self.file_size:
                    self._warn(f"core file {self.path} is truncated: notes cut short")
                buf = image[min(ph.offset, self.file_size):ph.offset + ph.filesz]
                try:
                    for name, ntype, desc in ec.iter_notes(buf):
                        seen += 1
                        if seen > MAX_NOTES:
                            self._warn(f"core file {self.path} has more than {MAX_NOTES} "
                                       f"notes; the rest are ignored")
                            return
                        if name == b"CORE":
                            self._note(ntype, desc)
                        elif name == b"MDBPY" and ntype == ec.NT_MDBPY_NAMES:
                            self._names = ec.parse_names(desc, MAX_FILES)
                except ValueError as e:
                    self._warn(f"core file {self.path}: damaged note ({e}); later notes ignored")
                finally:
                    buf.release()

    def _note(self, ntype: int, desc: bytes) -> None:
        try:
            if ntype == ec.NT_PRSTATUS:
                if len(self._threads) >= MAX_THREADS:
                    self._warn(f"core file {self.path} has more than {MAX_THREADS} threads; "
                               f"the rest are ignored")
                    return
                st = ec.parse_prstatus(desc)
                sig = signal_name(st.cursig) if st.cursig else ""
                self._threads.append(Thread(st.tid, regs=st.regs, state=sig))
                self._cursig.append(st.cursig)
            elif ntype == ec.NT_PRPSINFO and self.psinfo is None:
                self.psinfo = ec.parse_prpsinfo(desc)
            elif ntype == ec.NT_AUXV and not self._auxv:
                self._auxv = ec.parse_auxv(desc)
            elif ntype == ec.NT_FILE and not self.files:
                self.files = self._disjoint(ec.parse_nt_file(desc, MAX_FILES))
                self._file_starts = [e.start for e in self.files]
                for fe in self.files:
                    self._entries_of.setdefault(fe.path, []).append(fe)
            elif ntype == ec.NT_SIGINFO and self.siginfo is None:
                self.siginfo = ec.parse_siginfo(desc)
        except ValueError as e:
            self._warn(f"core file {self.path}: ignoring a damaged note ({e})")

    def _disjoint(self, entries: list[ec.FileEntry]) -> list[ec.FileEntry]:
        """NT_FILE entries sorted, each cut where the one before it ends: only a hostile core
        overlaps them, and overlapping entries would multiply the omitted mappings."""
        out: list[ec.FileEntry] = []
        for e in sorted(entries, key=lambda e: (e.start, e.end)):
            if out and e.start < out[-1].end:
                self._warn(f"core file {self.path}: NT_FILE entries overlap at 0x{e.start:x}")
                if e.end <= out[-1].end:
                    continue
                e = e._replace(start=out[-1].end, offset=e.offset + out[-1].end - e.start)
            out.append(e)
        return out

    def _build_segments(self, loads: list[tuple[ec.Phdr, int]]) -> None:
        segs = []
        short = 0
        for ph, end in loads:
            claimed = min(ph.filesz, end - ph.vaddr)
            avail = max(0, min(claimed, self.file_size - ph.offset))
            short += claimed - avail
            segs.append(_Segment(ph.vaddr, end, ec.perms_from_flags(ph.flags), ph.offset,
                                 avail, claimed))
        if short:
            self._warn(f"core file {self.path} is truncated: {short} bytes of memory missing")
        cut: list[int] = []
        segs = _clip_overlaps(segs, cut)
        if cut:
            self._warn(f"core file {self.path}: {len(cut)} segment(s) overlap the next (the "
                       f"first at 0x{cut[0]:x}); each address is kept by one, the one holding "
                       f"bytes for it")
        for s in segs:
            fe = self._file_entry(s.start)
            if fe is not None:
                s.path, s.foff = fe.path, fe.offset + (s.start - fe.start)
        # Mapped files the core omitted entirely (gdb writes no PT_LOAD for unmodified text).
        starts = [s.start for s in segs]
        segs += [self._omitted(fe, a, b) for fe in self.files
                 for a, b in _gaps(fe, segs, starts)]
        self._set_segments(segs)
        needed = sorted({s.path for s in self._segs if s.path and s.avail < s.end - s.start})
        for p in needed[:MAX_DISK_FILES]:
            self._check_disk_file(p)
        if len(needed) > MAX_DISK_FILES:
            self._warn(f"core file {self.path} maps {len(needed)} files; pages of all but the "
                       f"first {MAX_DISK_FILES} that are not in the core are unreadable")
        for s in self._segs:
            if s.perms == "?":
                s.perms = self._file_perms(s)
        self._name_anonymous()

    def _name_anonymous(self) -> None:
        """Give anonymous mappings the pseudo-names /proc/PID/maps showed, so ::mappings reads
        the same on a core as on the live process: from mdbpy's own note when the core has
        one, else from what the kernel's layout implies (the main thread's stack pointer, the
        vDSO address in auxv, the fixed vsyscall page, brk within 1 GiB past the exe)."""
        anon = [s for s in self._segs if not s.path]
        if self._names is not None:
            for s in anon:
                s.path = self._names.get((s.start, s.end), "")
            return
        named: dict[int, str] = {}
        main = next((t for t in self._threads if t.tid == self.pid), None)
        sp = main.regs.get("rsp") if main is not None else None
        exe = self._recorded_exe()
        exe_end = max((s.end for s in self._segs if exe and s.path == exe), default=None)
        for s in anon:
            if sp is not None and s.start <= sp < s.end:
                named[s.start] = "[stack]"
            elif s.start == self._auxv.get(ec.AT_SYSINFO_EHDR):
                named[s.start] = "[vdso]"
            elif s.start == ec.VSYSCALL_ADDR:
                named[s.start] = "[vsyscall]"
        if exe_end is not None:
            brk = [s for s in anon if s.start not in named and "w" in s.perms
                   and exe_end < s.start <= exe_end + ec.BRK_RANDOM_RANGE]
            if brk:
                named[brk[0].start] = "[heap]"
        for s in anon:
            s.path = named.get(s.start, "")

    def _omitted(self, fe: ec.FileEntry, start: int, end: int) -> _Segment:
        return _Segment(start, end, "?", path=fe.path, foff=fe.offset + (start - fe.start))

    def _file_perms(self, s: _Segment) -> str:
        """Perms of a mapping the core omitted: from the file's own PT_LOAD at that offset."""
        df = self._disk.get(s.path)
        if df is not None and df.mm is not None:
            if df.loads is None:  # once per file: a core may omit thousands of its mappings
                df.loads = _file_loads(df.mm)
            for ph in df.loads:
                if ph.offset - ph.offset % ec.PAGE <= s.foff < ph.offset + ph.filesz:
                    return ec.perms_from_flags(ph.flags)
        return "r--p"

    def _file_entry(self, addr: int) -> ec.FileEntry | None:
        i = bisect.bisect_right(self._file_starts, addr) - 1
        if i >= 0 and addr < self.files[i].end:
            return self.files[i]
        return None

    # -- files the core maps --------------------------------------------------------------
    def _core_build_id(self, path: str) -> bytes | None:
        """The build-id in the core's own copy of `path` (its first page is normally there)."""
        entries = self._entries_of.get(path, [])

        def read_at(off: int, n: int) -> bytes:
            for e in entries:
                if e.offset <= off < e.offset + (e.end - e.start):
                    return self._image_prefix(e.start + off - e.offset, min(n, 1 << 16))
            return b""

        return ec.gnu_build_id(read_at)

    def _image_prefix(self, addr: int, n: int) -> bytes:
        """As many of the n bytes at addr as the core image itself holds (no fallbacks)."""
        seg = self._locate(addr)
        if seg is None or addr - seg.start >= seg.avail:
            return b""
        rel = addr - seg.start
        return self._mm[seg.off + rel:seg.off + min(seg.avail, rel + n)]

    def _check_disk_file(self, path: str) -> None:
        """Open and check the disk copy of a mapped file; warn when it cannot serve."""
        local = self.file_path(path)
        shown = _printable(local)
        df = self._disk[path] = _DiskFile(local, None, 0)
        try:
            with _open_regular(local) as f:
                df.size = os.fstat(f.fileno()).st_size
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if df.size else None
        except OSError as e:
            self._warn(f"{shown}: {e.strerror}; its pages not in the core are unreadable")
            return
        if mm is None:
            self._warn(f"{shown}: empty file; its pages not in the core are unreadable")
            return
        want = self._core_build_id(path)
        have = ec.gnu_build_id(lambda off, n: mm[off:off + min(n, 1 << 16)])
        if want is None:
            self._warn(f"{shown}: the core holds no build-id for it; using it unverified")
        elif want != have:
            mm.close()
            got = have.hex() if have else "none"
            self._warn(f"{shown}: build-id {got} does not match the core's {want.hex()}; its "
                       f"pages not in the core are unreadable")
            return
        df.mm = mm

    def _data(self, seg: _Segment) -> list[tuple[int, int]]:
        """The core's image of the segment, then what the mapped file on disk holds past the
        bytes the core claims (up to the page holding the file's last byte), when it may
        stand in (see _missing)."""
        pieces = [(seg.start, seg.start + seg.avail)]
        df = self._disk.get(seg.path) if seg.path else None
        if df is not None and df.mm is not None:
            file_end = seg.start - seg.foff + -(-df.size // ec.PAGE) * ec.PAGE
            pieces.append((seg.start + seg.claimed, min(seg.end, file_end)))
        return pieces

    def _missing(self, seg: _Segment, addr: int, n: int) -> bytes:
        df = self._disk.get(seg.path) if seg.path else None
        if df is None or df.mm is None:
            raise ReadError(addr, n, NOT_IN_CORE, until=seg.end)
        foff = seg.foff + (addr - seg.start)
        if foff >= df.size:
            # the process saw zeros in the rest of the page holding the file's last byte
            if foff < -(-df.size // ec.PAGE) * ec.PAGE:
                return bytes(min(n, ec.PAGE - foff % ec.PAGE))
            raise ReadError(addr, n, f"beyond the end of {df.path}", until=seg.end)
        return df.mm[foff:min(foff + n, df.size)]

    def file_path(self, path: str) -> str:
        """A path the core records, as found here: the `exe` given for the executable, else
        under --sysroot when one was given."""
        if self.exe and path == self._recorded_exe():
            return self.exe
        if self.sysroot:
            return os.path.join(self.sysroot, path.lstrip("/"))
        return path

    def _recorded_exe(self) -> str | None:
        """The executable's path as the core records it: the file mapping AT_PHDR, else
        AT_EXECFN's string."""
        phdr = self._auxv.get(ec.AT_PHDR)
        fe = self._file_entry(phdr) if phdr is not None and self.files else None
        if fe is not None:
            return fe.path
        execfn = self._auxv.get(ec.AT_EXECFN)
        if execfn:
            raw = self._image_prefix(execfn, 4096).split(b"\0", 1)[0]
            if raw:
                return raw.decode("utf-8", "surrogateescape")
        return None

    # -- Target ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        if self.psinfo is not None:
            return self.psinfo.pid
        return self._threads[0].tid if self._threads else None

    def threads(self) -> list[Thread]:
        return list(self._threads)

    def auxv(self) -> dict[int, int]:
        return dict(self._auxv)

    def exe_path(self) -> str | None:
        if self.exe:
            return os.path.abspath(self.exe)
        rec = self._recorded_exe()
        return self.file_path(rec) if rec else None

    def describe(self) -> str:
        return f"core file {self.path}"

    def close(self) -> None:
        for df in self._disk.values():
            if df.mm is not None:
                df.mm.close()
                df.mm = None
        super().close()

    def cursig(self) -> int:
        """The signal that ended the process: the first thread's pr_cursig, as mdb reads the
        representative LWP's (0 for a core taken from a live process by gcore)."""
        return next((s for s in self._cursig if s), 0)

    def signalled(self) -> tuple[int, int] | None:
        k = next((i for i, s in enumerate(self._cursig) if s), None)
        return None if k is None else (self._threads[k].tid, self._cursig[k])

    def status_lines(self) -> list[str]:
        ps = self.psinfo
        exe = self.exe_path()
        fname = ps.fname if ps else os.path.basename(exe or "") or "unknown"
        lines = [f"debugging core file of {fname} (64-bit) from {self.path}"]
        if exe:
            lines.append(f"file: {exe}")
        if ps:
            lines.append(f"initial argv: {ps.psargs}")
        lines.append("threading model: native threads")
        sig = self.cursig()
        if sig:
            status = f"process terminated by {signal_name(sig)} ({_strsignal(sig)})"
            si = self.siginfo
            if si is not None and si.signo == sig and si.is_fault:
                status += f", addr={si.addr:x}"
        else:
            status = "process core file generated with gcore(1)"
        lines.append("status: " + status)
        return lines


def _gaps(fe: ec.FileEntry, segs: list[_Segment], starts: list[int]) -> list[tuple[int, int]]:
    """The parts of a file mapping that no segment covers (segs sorted, starts their starts)."""
    out, cur = [], fe.start
    for i in range(max(bisect.bisect_right(starts, fe.start) - 1, 0), len(segs)):
        s = segs[i]
        if s.start >= fe.end:
            break
        if s.end <= cur:
            continue
        if s.start > cur:
            out.append((cur, s.start))
        cur = max(cur, s.end)
    if cur < fe.end:
        out.append((cur, fe.end))
    return out


def _file_loads(mm: mmap.mmap) -> list[ec.Phdr]:
    """The PT_LOAD headers (at most 64 headers read) of an ELF file on disk; none if damaged."""
    try:
        eh = ec.parse_ehdr(mm[:ec.EHDR.size])
    except ValueError:
        return []
    count = min(eh.phnum, 64)
    return [ph for ph in ec.parse_phdrs(mm[eh.phoff:eh.phoff + count * ec.PHDR.size], count)
            if ph.type == ec.PT_LOAD]


def _strsignal(sig: int) -> str:
    try:
        return signal.strsignal(sig) or "unknown signal"
    except ValueError:
        return "unknown signal"


def open_file_target(path: str, exe: str | None = None, sysroot: str | None = None,
                     writable: bool = False) -> Target:
    """The target for a file named on the command line: a core (with `exe` as its executable
    when given), or an executable/shared object alone. Errors are one-line TargetErrors."""
    if path is None:
        raise TargetError("no core file given")
    if exe is not None and not os.path.isfile(exe):
        raise TargetError(f"cannot open {exe}: " + ("not a regular file" if os.path.exists(exe)
                                                    else "No such file or directory"))
    if os.path.isdir(path):
        raise TargetError(f"cannot open {path}: Is a directory")
    f, mm, size = _open_image(path, False)
    try:
        head = mm[:ec.EHDR.size]
    finally:
        mm.close()
        f.close()
    err = ec.check_ident(head)
    if err:
        raise TargetError(f"{path}: {err}")
    try:
        etype = ec.parse_ehdr(head).type
    except ValueError as e:
        raise TargetError(f"{path}: {e}") from None
    if etype == ec.ET_CORE:
        return CoreTarget(path, exe=exe, sysroot=sysroot, writable=writable)
    if exe is not None:
        raise TargetError(f"{path}: not a core file")
    if etype in (ec.ET_EXEC, ec.ET_DYN):
        return FileTarget(path, writable=writable)
    raise TargetError(f"{path}: ELF type {etype} is neither an executable nor a core file")
