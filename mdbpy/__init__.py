"""mdbpy: the Modular Debugger's language and heap dcmds for Linux processes and core files.

Nothing here imports the heavy dependencies (numpy, pyelftools, capstone, prompt_toolkit): a batch
run such as `mdbpy -p PID -e ::status` must start as fast as gdb, so every module imports what it
needs at the point of use.
"""

__version__ = "0.1.0"
