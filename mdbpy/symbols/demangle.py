"""C++ symbol names as gdb's bt shows them (`zoo::Cat::speak`, `zoo::apply<int>`), for the
stack listings ($c, $C, ::stack, ::stacks), ::whatis and the leak reports' callers and
stacks (`::nm` and `/a` keep the symbol's own name, which expressions can take back, unless
demangling is switched on with `$G`: then Session.format_addr demangles every symbolic address
and ::nm prints whole demangled names).

The demangler is the C++ runtime's own, `abi::__cxa_demangle` in libstdc++ (the code of GCC's
libiberty that c++filt and gdb use, so the text is theirs), called through ctypes: mdbpy gains
no dependency, and libstdc++ is present wherever C++ programs run. Where it is not, names stay
mangled. libiberty bounds its recursion, so a hostile name from a damaged file fails to
demangle rather than crashing; names longer than MAX_NAME are not passed to it at all.

A function's name is shown without its parameter list, qualifiers and (for a template
function) return type, as gdb's bt names frames; the special names (`vtable for Circle`,
`guard variable for ...`: mangled `_ZT...`, `_ZG...`) are shown whole.
"""

from __future__ import annotations

import functools
import re

MAX_NAME = 4096
SPECIAL = ("_ZT", "_ZG")  # vtables, typeinfo, thunks, guard variables, TLS wrappers
ADDR = re.compile(r"(?P<obj>[^`]*`)?(?P<sym>_Z[^`+]*)(?P<off>\+0x[0-9a-f]+)?")
CLONE = re.compile(r"( \[clone [^\]]*\])+$")
QUALIFIERS = (" const", " volatile", " &&", " &")


@functools.lru_cache(maxsize=1)
def _cxa():
    """(__cxa_demangle, free), or None without libstdc++."""
    import ctypes

    try:
        lib = ctypes.CDLL("libstdc++.so.6")
        free = ctypes.CDLL(None).free
    except (OSError, AttributeError):
        return None
    f = lib.__cxa_demangle
    f.restype = ctypes.c_void_p
    f.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                  ctypes.POINTER(ctypes.c_int)]
    free.argtypes = [ctypes.c_void_p]
    return f, free


@functools.lru_cache(maxsize=4096)
def demangle(name: str) -> str | None:
    """The full demangled text of a mangled C++ name (`zoo::Cat::speak(int) const`), or
    None when it is not one (or cannot be demangled here). A symbol version (`@GLIBCXX_3.4`)
    is dropped first."""
    import ctypes

    name = name.split("@", 1)[0]
    if not name.startswith("_Z") or len(name) > MAX_NAME:
        return None
    cxa = _cxa()
    if cxa is None:
        return None
    f, free = cxa
    status = ctypes.c_int(0)
    out = f(name.encode("ascii", "replace"), None, None, ctypes.byref(status))
    if not out:
        return None
    try:
        return ctypes.string_at(out).decode("utf-8", "replace")
    finally:
        free(out)


def function_name(name: str) -> str:
    """`name` as gdb's bt names a frame: demangled without parameters, qualifiers or a
    template function's return type; special names whole; anything else unchanged."""
    full = demangle(name)
    if full is None:
        return name
    if name.startswith(SPECIAL):
        return full
    clone = CLONE.search(full)
    text = full[:clone.start()] if clone else full
    text = _strip_qualifiers(text)
    if text.endswith(")"):
        text = text[:_group_start(text)]
    words = _top_level_words(text)
    at = next((i for i, w in enumerate(words) if "operator" in w), len(words) - 1)
    return " ".join(words[at:]) + (clone.group(0) if clone else "")


def readable(text: str) -> str:
    """An address as format_addr spells it (`obj`sym+0xoff`) with its symbol, when mangled,
    named as function_name names it."""
    m = ADDR.fullmatch(text)
    if m is None:
        return text
    return (m.group("obj") or "") + function_name(m.group("sym")) + (m.group("off") or "")


def _strip_qualifiers(text: str) -> str:
    while True:
        for q in QUALIFIERS:
            if text.endswith(q):
                text = text[:-len(q)]
                break
        else:
            return text


def _group_start(text: str) -> int:
    """Where the balanced (...) that ends text starts (0 when unbalanced)."""
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        c = text[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                return i
    return 0


def _top_level_words(text: str) -> list[str]:
    """text split at the spaces outside (), <>, [] and {} (a return type, `operator new`)."""
    words, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "(<[{":
            depth += 1
        elif c in ")>]}":
            depth -= 1
        elif c == " " and depth == 0:
            words.append(text[start:i])
            start = i + 1
    words.append(text[start:])
    return [w for w in words if w]
