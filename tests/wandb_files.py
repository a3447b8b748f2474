"""Reading W&B's offline ``.wandb`` files back in tests: their records, checked, as protobuf messages.

wandb ≥ 0.2x no longer ships its Python reader (``wandb.sdk.internal.datastore``; the writer is its Go
core now), so this is that reader's format: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
LevelDB-log blocks of 32 KiB of records (CRC-32 of type byte + data, 2-byte length, 1-byte type: full /
first / middle / last). Every record's CRC is checked, so a misread fails loudly. The messages are
``wandb.proto.wandb_internal_pb2.Record``, from the installed wandb.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """The protobuf records of one ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:7] == HEADER, f"{path}: not a W&B datastore file ({data[:7]!r})"
    out, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the rest of a block too small for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if crc == 0 and length == 0 and kind == 0:
            break  # zeros: the end of what was written
        body = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad CRC at {pos}"
        pos += 7 + length
        parts = body if kind in (FULL, FIRST) else parts + body
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


def history(path: Path) -> list[dict[str, Any]]:
    """The logged rows (``wandb.log``) of one ``.wandb`` file."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def run_id(path: Path) -> str:
    """The run id the file belongs to."""
    return next(r.run.run_id for r in records(path) if r.WhichOneof("record_type") == "run")
