"""The run directory on the shared filesystem — the only code that writes it.

``layout`` (the files' names), ``store`` (state.json, the run's files, finding runs), ``publish``
(the one seal-then-rename protocol), ``checkpoints`` (commit, verify, rotate). Imports no planner,
no torch: the CLI side, the nodes and every rank use it.
"""
