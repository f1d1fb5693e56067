"""Only the C extension lives here; everything else is in pyproject.toml.

``headend._fastingest`` is the ingest's hot path (headend/fastscan.py).  It is
optional: without a C compiler the install still succeeds and the ingest runs
the pure-Python path (``python -m headend.ingest --scanner python``).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "headend._fastingest", ["headend/_fastingest.c"], optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
