"""SFT training data: what the model is trained on, token by token.

The stages, in order, one module each:
  1. ``read``: a data file or ``save_to_disk`` directory into raw rows.
  2. ``formats``: the format of the rows (alpaca, chat, text) and each row as pieces of text,
     marked learnt or not (completion-only labels).
  3. ``tokenize``: pieces into ``input_ids`` and ``labels``, cut to ``seq_len``.
  4. ``pack``: (with ``train.packing``) samples into rows of at most ``seq_len`` tokens.
  5. ``cache``: the result saved once on the shared filesystem and loaded by every rank
     (``pipeline`` runs stages 1-4 on a miss).
Apart from them ``collate`` pads rows into the Trainer's batches.

No collective calls here (``torch.distributed``): ranks on other nodes wait for the cache through
the filesystem. torch, datasets and transformers are imported only inside functions.
"""

from __future__ import annotations

from hpcft.train.data.cache import (
    CACHE_MARKER,
    DATA_PIPELINE_VERSION,
    build_datasets,
    cache_key,
    cache_root,
    cached_dataset,
    content_digest,
    publish,
    tokenizer_fingerprint,
    wait_for_marker,
)
from hpcft.train.data.collate import SFTCollator, make_collator
from hpcft.train.data.formats import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_INPUT,
    DEFAULT_CHAT_TEMPLATE,
    FORMATS,
    SHAREGPT_ROLES,
    Piece,
    RowError,
    chat_messages,
    chat_pieces,
    chat_template,
    completion_pieces,
    detect_format,
    sample_pieces,
    split_sample,
)
from hpcft.train.data.pack import pack_rows, pack_table
from hpcft.train.data.pipeline import build_dataset, load_dataset
from hpcft.train.data.read import iter_rows, read_table
from hpcft.train.data.tokenize import IGNORE_INDEX, DataOptions, encode_pieces, tokenize_rows, tokenize_sample

__all__ = [
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_INPUT",
    "CACHE_MARKER",
    "DATA_PIPELINE_VERSION",
    "DEFAULT_CHAT_TEMPLATE",
    "FORMATS",
    "IGNORE_INDEX",
    "SHAREGPT_ROLES",
    "DataOptions",
    "Piece",
    "RowError",
    "SFTCollator",
    "build_dataset",
    "build_datasets",
    "cache_key",
    "cache_root",
    "cached_dataset",
    "chat_messages",
    "chat_pieces",
    "chat_template",
    "completion_pieces",
    "content_digest",
    "detect_format",
    "encode_pieces",
    "iter_rows",
    "load_dataset",
    "make_collator",
    "pack_rows",
    "pack_table",
    "publish",
    "read_table",
    "sample_pieces",
    "split_sample",
    "tokenize_rows",
    "tokenize_sample",
    "tokenizer_fingerprint",
    "wait_for_marker",
]
