"""What every benchmark shares: run the measurement with stdout kept clean, then print its two lines."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable


def report(measure: Callable[[], tuple[str, str]]) -> None:
    """Run ``measure`` with fd 1 pointed at stderr, then print its JSON line and markdown row.

    deepspeed (imported by transformers), the tokenizers trainer and the Trainer write to stdout;
    this keeps stdout to the two result lines, so scripts can parse them.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            line, row = measure()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(line)
    print(row)
