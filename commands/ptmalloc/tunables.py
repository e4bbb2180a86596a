"""glibc.malloc.perturb as the process's own start-up set it from its environment.

glibc reads its tunables once, in the dynamic loader, from the environment the process started
with: `GLIBC_TUNABLES=glibc.malloc.perturb=N` (name=value items separated by ':'; a later item
wins) or its older alias `MALLOC_PERTURB_=N`, which GLIBC_TUNABLES overrides. N is read as C
reads an unsigned long (0x.. hex, 0.. octal, else decimal) and kept only within 0..0xff; a
setuid or otherwise AT_SECURE process ignores both. Where releases disagree (a value that is
not entirely a number: older loaders take its numeric prefix, newer ones reject it; several
MALLOC_PERTURB_ with different values; an out-of-range GLIBC_TUNABLES value next to an alias)
the byte is unknown: mdbpy never guesses a fill byte. A program that changes it later with
mallopt(M_PERTURB) is seen only through libc's symbols (perturb_byte).
"""

from __future__ import annotations

import re

from mdbpy.target.environ import AT_SECURE, initial_environ

TUNABLE = b"glibc.malloc.perturb"
ALIAS = b"MALLOC_PERTURB_"
PERTURB_MAX = 0xFF
_NUMBER = re.compile(rb"[ \t]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def parse_number(text: bytes) -> int | None:
    """A tunable's number as glibc's _dl_strtoul reads it, when the whole text is one."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    digits = m.group(2)
    base = 16 if digits[:2].lower() == b"0x" else 8 if len(digits) > 1 and digits[0:1] == b"0" \
        else 10
    n = int(digits[2:] if base == 16 else digits, base)
    return -n if m.group(1) == b"-" else n


def perturb_from_env(env: list[bytes] | None, secure: bool = False) -> int | None:
    """The perturb byte (0: none) glibc took from the environment `env`, or None when it is
    unknown (env unreadable, or a value releases read differently: see the module)."""
    if env is None:
        return None
    if secure:
        return 0
    tunable, aliases = None, []
    for entry in env:
        name, eq, value = entry.partition(b"=")
        if not eq:
            continue
        if name == b"GLIBC_TUNABLES":
            for item in value.split(b":"):
                key, eq, val = item.partition(b"=")
                if eq and key == TUNABLE:
                    tunable = val
        elif name == ALIAS:
            aliases.append(value)
    if tunable is not None:
        n = parse_number(tunable)
        if n is None:
            return None
        if 0 <= n <= PERTURB_MAX:
            return n
        if aliases:
            return None  # ignored; whether the alias then applies depends on the release
    if len(set(aliases)) > 1:
        return None  # the first wins on older releases, the last on newer ones
    if aliases:
        n = parse_number(aliases[0])
        if n is None:
            return None
        return n if 0 <= n <= PERTURB_MAX else 0
    return 0


def perturb_of(target) -> int | None:
    """The perturb byte from the target's initial environment (see perturb_from_env)."""
    return perturb_from_env(initial_environ(target), bool(target.auxv().get(AT_SECURE)))
