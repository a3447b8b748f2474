"""``python -m hpcft.train.torchrun <torchrun options> SCRIPT ...``: torchrun itself (``torch.distributed.run``'s
``main``: its parser, agent, restarts and signals), with hpcft's two fixes to its c10d rendezvous
(``elastic_workarounds``: the last node seen within ~0.1 s, not at the next 1 s poll).

hpcft's torchrun launcher runs this for a user's command (its ranks are ``hpcft.node.rank_exec``, so the job's
python has hpcft) and for hpcft's trainer with ``launch.warm_start: false``; hpcft's trainer otherwise runs
under ``hpcft.train.warm``, which applies the same fixes.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from hpcft.train import elastic_workarounds

    elastic_workarounds.apply()
    from torch.distributed.run import main as torchrun

    torchrun(argv)  # exit status and error summary as torchrun's (its @record)


if __name__ == "__main__":
    main(sys.argv[1:])
