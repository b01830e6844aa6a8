"""Test support shared by ``tests/`` and ``benchmarks/``: independent oracles and streams.

Nothing in the product imports it (an import-linter contract in pyproject.toml says so);
it is not installed with the package.
"""
