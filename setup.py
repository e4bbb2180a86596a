"""The one thing pyproject.toml cannot declare stably: findleaks' inner loops (mdbpy/heap/kernel.c),
built by pip install as a plain C library that mdbpy/heap/kernel.py loads with ctypes (it needs a
C compiler, not Python's headers)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mdbpy.heap._kernel", sources=["mdbpy/heap/kernel.c"],
                             extra_compile_args=["-O3"])])
