"""Launchers: how one node starts its worker processes — pure builders.

``base`` holds the shared types (``LaunchContext`` → ``LaunchCommand``) and the registry: one
line per launcher with its shape, what it needs on the node and the module whose
``build(ctx) -> LaunchCommand`` decides its argv, environment and files. A builder writes no
files and probes no tools (``hpcft node`` does both). This package file imports nothing.
"""
