"""mdbpy: the Modular Debugger's language and heap dcmds for Linux processes and core files.

Nothing here imports the heavy dependencies (numpy, pyelftools, capstone, prompt_toolkit): a batch
run such as `mdbpy -p PID -e ::status` must start as fast as gdb, so every module imports what it
needs at the point of use. The Python API (mdbpy.attach, mdbpy.open_core, mdbpy.demo, see
docs/api.md) is imported from mdbpy.api on first use of one of its names, for the same reason.
"""

__version__ = "0.1.0"

_API = ("attach", "open_core", "demo", "Debugger")
__all__ = [*_API, "MdbError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from mdbpy import api

        return getattr(api, name)
    if name == "MdbError":
        from mdbpy.errors import MdbError

        return MdbError
    raise AttributeError(f"module 'mdbpy' has no attribute {name!r}")
