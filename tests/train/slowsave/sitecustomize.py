"""Holds a rank inside its final save (tests/train/test_final_save.py puts this on PYTHONPATH).

In a rank of a run (RANK and HPCFT_RUN_DIR set when the event comes: warm ranks set RANK after their fork
from a server that imported this file), opening the final model's ``generation_config.json`` for writing —
transformers writes it after ``config.json`` and before the weights — writes ``RUN/.in-final-save`` and
sleeps, so the test can kill every process of the job in the middle of the save.
"""

import os
import sys
import time

_RUN = os.environ.get("HPCFT_RUN_DIR")


def _hook(event, args):
    if event != "open" or "RANK" not in os.environ or not args or not isinstance(args[0], str):
        return
    path, mode = args[0], str(args[1]) if len(args) > 1 else "r"
    if path.endswith("generation_config.json") and "w" in mode and "/checkpoints/" not in path:
        with open(os.path.join(_RUN, ".in-final-save"), "a") as f:
            f.write(f"{os.getpid()} {path}\n")
        time.sleep(600)


if _RUN:
    sys.addaudithook(_hook)
