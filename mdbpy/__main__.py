"""`python -m mdbpy`, and the `mdbpy` console script (pyproject.toml points it at main here).

`python -m` puts the current directory first on sys.path (`python -c` and an empty PYTHONPATH
entry put ''), ahead of the standard library and site-packages. A debugger is often run in a
directory it does not trust, next to a core and whatever else was found there, so before
anything else is imported that entry is dropped: a `numpy.py`, `typing.py` or `mdbpy_commands/`
planted there is never imported. Python itself found `mdbpy` before this ran; docs/safety.md
says what that means for `python -m mdbpy` in such a directory.
"""

import os
import sys


def drop_cwd_from_path() -> None:
    """Remove '' and every entry naming the current directory from sys.path."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the current directory was removed: only '' can still name it
        cwd = None
    sys.path[:] = [p for p in sys.path
                   if p not in ("", ".") and (cwd is None or os.path.realpath(p) != cwd)]


drop_cwd_from_path()

from mdbpy.cli import main  # noqa: E402  (imports only after the path is safe)

if __name__ == "__main__":
    sys.exit(main())
