"""mdbpy's bundled dmods, installed as the package `mdbpy_commands`.

Each subpackage is one module as mdb has them: `core` (the built-in dcmds, always loaded), and the
allocator modules. A dmod is loaded with Session.load_dmod() or `::load NAME`.
"""
