"""The ``hpcft`` command line: each command parses, calls the library, prints. No decisions here.

Heavy libraries (torch, transformers, deepspeed) are never imported on this path; ``init-demo``
loads ``hpcft.train`` only when it runs. The group lives in ``base``; the commands live in
modules by theme (jobs, nodeside, runs, tools), and importing them registers them on ``main``.
"""

from hpcft.cli import bench, clusters, jobs, nodeside, runs, sweep, tools  # noqa: F401 - registers the commands
from hpcft.cli.base import main

__all__ = ["main"]
