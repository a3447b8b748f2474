"""Backends: how a planned run reaches the machines (sbatch, submitit, local) — the effects.

``base`` is the registry (one line per backend); each backend is one module with a pure
``prepare`` (what the plan shows: files, submit argv, the allocation node 0 will see) and the
effects ``start`` / ``cancel``. ``actions`` holds what every backend shares: submit into a new run
directory, resubmit into an existing one, resume, cancel. This package file imports nothing, so the
spec can read the registry's names without loading any backend.
"""
