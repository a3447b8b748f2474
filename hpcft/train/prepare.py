"""``python -m hpcft.train.prepare RUN``: build the run's tokenized data in the shared cache (the prepare job).

One process, no GPU and no process group: the same ``build_datasets`` the ranks call, as rank 0 of one
(a cache that is ready already is a hit and returns at once). See ``hpcft.plan.prepare``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from hpcft.errors import HpcftError
from hpcft.rundir import store

log = logging.getLogger("hpcft.prepare")


def prepare(run: Path) -> None:
    """Tokenize and pack the run's train and eval data into the cache."""
    from hpcft.train import data, model

    spec = store.load_run_spec(run)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    t0 = time.time()
    train, evals = data.build_datasets(spec, run, model.load_tokenizer(spec))
    log.info("data ready in %.1f s: %d training rows%s, cache %s", time.time() - t0, len(train),
             f", {len(evals)} eval rows" if evals is not None else "", data.cache_root(spec, run))  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        prepare(Path(sys.argv[1]).resolve())
    except HpcftError as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
