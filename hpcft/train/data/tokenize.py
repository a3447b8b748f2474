"""Tokenizing SFT samples: pieces into ``input_ids`` and ``labels`` (``IGNORE_INDEX`` where nothing is learnt).

This module decides the tokens and labels of each sample. Samples are cut to ``seq_len`` tokens; a
sample left with no token to learn is dropped (and counted in the log). Every row that does not fit
its format is collected and reported at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hpcft.errors import ConfigError
from hpcft.train.data.formats import Piece, RowError, chat_template, completion_pieces, sample_pieces
from hpcft.train.data.read import iter_rows

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips (torch.nn.CrossEntropyLoss ignore_index)
_MAX_PROBLEMS = 20


@dataclass(frozen=True)
class DataOptions:
    """What, besides the data and the tokenizer, decides the tokenized dataset."""

    format: str = "auto"
    seq_len: int = 512
    completion_only: bool = True
    packing: bool = False


def encode_pieces(tokenizer, samples: list[list[Piece]], seq_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, labels) of each sample, cut to ``seq_len``; one batch call of the tokenizer."""
    texts = [piece for sample in samples for piece, _ in sample if isinstance(piece, str)]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    all_ids, all_labels = [], []
    for sample in samples:
        ids: list[int] = []
        labels: list[int] = []
        for piece, learn in sample:
            tokens = next(encoded) if isinstance(piece, str) else piece
            ids += tokens
            labels += tokens if learn else [IGNORE_INDEX] * len(tokens)
        if labels:
            # Nothing predicts a sample's first token; in a packed row the previous sample's last token would.
            labels[0] = IGNORE_INDEX
        all_ids.append(ids[:seq_len])
        all_labels.append(labels[:seq_len])
    return all_ids, all_labels


def tokenize_sample(tokenizer, prompt: str, completion: str, seq_len: int) -> dict[str, list[int]]:
    """input_ids = [bos] prompt completion [eos], truncated; labels mask the prompt."""
    (ids,), (labels,) = encode_pieces(tokenizer, [completion_pieces(tokenizer, prompt, completion, False)], seq_len)
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_rows(ds, fmt: str, tokenizer, opts: DataOptions, source: str):
    """A ``pyarrow.Table`` (input_ids, labels) of every row of ``ds`` that leaves a token to learn.

    Raises:
        ConfigError: listing the rows (1-based) that do not fit ``fmt``, or if no sample is left.
    """
    import pyarrow as pa

    template, ids_type = chat_template(tokenizer), pa.list_(pa.int32())
    tables, problems, n, dropped = [], [], 0, 0
    for rows in iter_rows(ds):
        samples = []
        for row in rows:
            n += 1
            try:
                samples.append(sample_pieces(row, fmt, tokenizer, template, opts.completion_only))
            except RowError as e:
                problems.append(f"{source}: row {n}: {e}")
        if problems:
            continue  # keep collecting problems; tokenizing is pointless now
        ids, labels = encode_pieces(tokenizer, samples, opts.seq_len)
        keep = [i for i, lab in enumerate(labels) if any(x != IGNORE_INDEX for x in lab)]
        dropped += len(ids) - len(keep)
        tables.append(
            pa.table(
                {
                    "input_ids": pa.array([ids[i] for i in keep], ids_type),
                    "labels": pa.array([labels[i] for i in keep], ids_type),
                }
            )
        )
    if problems:
        more = [f"... and {len(problems) - _MAX_PROBLEMS} more rows"] if len(problems) > _MAX_PROBLEMS else []
        raise ConfigError(problems[:_MAX_PROBLEMS] + more)
    if dropped:
        log.warning(
            "%s: dropped %d of %d samples with no token to learn within seq_len %d", source, dropped, n, opts.seq_len
        )
    if dropped == n:
        raise ConfigError(
            [
                f"{source}: no sample has a token to learn within seq_len {opts.seq_len} "
                "(HINT: raise train.seq_len, or check the output / assistant fields)"
            ]
        )
    return pa.concat_tables(tables)
