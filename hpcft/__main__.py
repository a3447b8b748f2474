"""``python -m hpcft`` (used on the nodes, where the console script may not be on PATH)."""

from hpcft.cli import main

main()
