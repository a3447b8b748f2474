"""One dataset built now, uncached: read, format, tokenize and (optionally) pack, in that order.

This module decides the order of the stages and validates ``train.data.format``; the cache
(``cache``) decides whether to run it at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hpcft.errors import ConfigError
from hpcft.train.data.formats import FORMATS, detect_format
from hpcft.train.data.pack import pack_table
from hpcft.train.data.read import read_table
from hpcft.train.data.tokenize import DataOptions, tokenize_rows

log = logging.getLogger(__name__)


def load_dataset(
    path: str | Path, fmt: str, tokenizer, seq_len: int, *, completion_only: bool = True, packing: bool = False
):
    """A tokenized (and optionally packed) ``datasets.Dataset`` of ``path``, built now, not cached."""
    return build_dataset(path, tokenizer, DataOptions(fmt, seq_len, completion_only, packing))


def build_dataset(path: str | Path, tokenizer, opts: DataOptions):
    """Read, format, tokenize and (with ``opts.packing``) pack ``path``; see the package docstring."""
    import datasets

    if opts.format not in ("auto", *FORMATS):
        raise ConfigError(
            [f"train.data.format: unknown format {opts.format!r}, expected one of auto, {', '.join(FORMATS)}"]
        )
    raw = read_table(path)
    fmt = detect_format(raw[0]) if opts.format == "auto" else opts.format
    table = tokenize_rows(raw, fmt, tokenizer, opts, str(path))
    n_samples = table.num_rows
    if opts.packing:
        table = pack_table(table, opts.seq_len)
    log.info("%s: %d %s samples -> %d rows%s", path, n_samples, fmt, table.num_rows, " (packed)" * opts.packing)
    return datasets.Dataset(table)
