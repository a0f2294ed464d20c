"""Benchmarks and the accuracy study (not tests, not installed).

Every script here runs as a module from the repository root, ``python -m benchmarks.<name>``, so that all of them
import the study's machinery (:mod:`benchmarks.study`) and each other the same way, as a package.
"""
