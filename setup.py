"""Shim for tools that still call `setup.py` (old `pip install -e`); all metadata lives in pyproject.toml."""
from setuptools import setup

setup()
