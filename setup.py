"""The driver's hot path in C (harness/load/_hotpath.c); optional: without a compiler the
pure-Python twin (harness/load/hotpath.py) serves. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("harness.load._hotpath", ["harness/load/_hotpath.c"], optional=True)])
