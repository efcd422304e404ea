"""Shim for tools that still call ``setup.py`` (Dataflow's ``--setup_file ./setup.py``).

The package metadata lives in pyproject.toml; this only hands over to setuptools.
"""

from setuptools import setup

setup()
