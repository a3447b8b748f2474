"""Packing tokenized samples into rows of at most ``seq_len`` tokens (``train.packing``).

Samples are placed into rows by best-fit decreasing; each row's ``position_ids`` restart at 0 for
every sample, with no ``attention_mask``. Called without a KV cache (the Trainer's ``use_cache=False``;
the collator passes it too), transformers (``masking_utils.find_packed_sequence_indices``) turns that
into a block-diagonal causal mask for the sdpa, eager and flex attention of models built on
``masking_utils`` (Llama, Mistral, Qwen, Gemma, ...), so samples never attend to each other.
Where this does NOT hold: flash-attention kernels detect packed rows from ``position_ids`` only for a
batch of one row (``modeling_flash_attention_utils._is_packed_sequence``; use ``batch_size: 1``
there), models that build their own masks (remote code, ALiBi models such as Bloom) and
recurrent/state-space layers (Mamba, Jamba), which carry state across the samples of a row.
"""

from __future__ import annotations

import bisect
from typing import Any


def pack_rows(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Sample indices per packed row: best-fit decreasing, every row holds at most ``seq_len`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    rows: list[list[int]] = []
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))  # the fullest row the sample still fits in
        if k < len(free):
            room, r = free.pop(k)
        else:
            room, r = seq_len, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - lengths[i] > 0:
            bisect.insort(free, (room - lengths[i], r))
    return rows


def pack_table(table, seq_len: int):
    """Packed rows (input_ids, labels, position_ids restarting at 0 per sample) of a tokenized table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.list_value_length(table["input_ids"]).to_numpy().astype(np.int64)
    rows = pack_rows(lengths.tolist(), seq_len)
    order = np.fromiter((i for row in rows for i in row), dtype=np.int64, count=len(lengths))
    taken = table.take(pa.array(order))
    sample_lens = lengths[order]
    row_lens = np.add.reduceat(sample_lens, np.cumsum([0] + [len(r) for r in rows[:-1]]))
    offsets = pa.array(np.concatenate([[0], np.cumsum(row_lens)]), pa.int64())
    starts = np.repeat(np.cumsum(sample_lens) - sample_lens, sample_lens)
    positions = pa.array(np.arange(int(sample_lens.sum())) - starts, pa.int32())

    def column(values) -> Any:
        return pa.LargeListArray.from_arrays(offsets, values)

    ids, labels = (pc.list_flatten(taken[c]).combine_chunks() for c in ("input_ids", "labels"))
    return pa.table({"input_ids": column(ids), "labels": column(labels), "position_ids": column(positions)})
