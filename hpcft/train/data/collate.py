"""Batches for the Trainer: rows padded to the longest of the batch, as long tensors.

This module decides padding and which of ``attention_mask`` / ``position_ids`` a batch carries; it
must not change the rows' tokens or labels.
"""

from __future__ import annotations

from typing import Any

from hpcft.train.data.tokenize import IGNORE_INDEX


class SFTCollator:
    """Pads rows to the longest of the batch (right side) and returns long tensors.

    Unpacked rows get an ``attention_mask``. Packed rows get ``position_ids``, no mask and
    ``use_cache=False`` (a model called with a KV cache does not look for packed rows); their
    padding is a segment of its own (positions from 0), so no real token attends to it.
    """

    def __init__(self, pad_id: int, packing: bool) -> None:
        self.pad_id = pad_id
        self.packing = packing
        self.tokens = 0  # real (not padding) tokens of every batch built here, counted on the CPU

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        self.tokens += sum(len(f["input_ids"]) for f in features)
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "extra": []}
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            batch["input_ids"].append([*f["input_ids"], *[self.pad_id] * pad])
            batch["labels"].append([*f["labels"], *[IGNORE_INDEX] * pad])
            batch["extra"].append([*f["position_ids"], *range(pad)] if self.packing else [1] * n + [0] * pad)
        batch["position_ids" if self.packing else "attention_mask"] = batch.pop("extra")
        out: dict[str, Any] = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        if self.packing:
            out["use_cache"] = False  # with a KV cache transformers ignores restarting position_ids (masking_utils)
        return out


def make_collator(tokenizer, packing: bool) -> SFTCollator:
    """The Trainer's data collator for rows built with the same ``packing`` setting."""
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad
    return SFTCollator(0 if pad is None else pad, packing)
