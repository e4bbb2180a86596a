"""The built-in dcmds and walkers (mdb's module `mdb`): language, target, symbols, output."""

DMOD_NAME = "mdb"  # the name mdb gives its built-in module (::dmods, ::help ATTRIBUTES)
