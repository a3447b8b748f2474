"""DeepSpeed imported only by ranks that use it: about 1 CPU-second less per rank start without ``--zero``.

accelerate's ``extract_model_from_parallel`` (accelerate/utils/other.py, 1.15.0), which every Trainer
calls when it is built (``unwrap_model``), imports deepspeed whenever it is installed, only to test
whether the model is a ``DeepSpeedEngine``. No object can be an instance of a class whose module was never
imported, so the test can wait until something imported deepspeed: a DeepSpeed job always has (its
engine is built from it), a job without never needs it. Safe for every job, hpcft's trainer and a user's
Trainer alike (``hf_integration``). Measured (this machine): ``import deepspeed`` on top of
transformers' Trainer, 0.9–1.0 CPU-s.
"""

from __future__ import annotations

import sys


def keep_deepspeed_lazy() -> None:
    """Make accelerate's unwrap look for a DeepSpeedEngine only once deepspeed is imported."""
    from accelerate.utils import other

    available = other.is_deepspeed_available
    if getattr(available, "_hpcft_lazy", False):
        return

    def is_deepspeed_available() -> bool:
        return "deepspeed" in sys.modules and available()

    is_deepspeed_available._hpcft_lazy = True
    other.is_deepspeed_available = is_deepspeed_available
