"""Reading SFT data: files and ``save_to_disk`` directories into a ``datasets.Dataset`` of raw rows.

This module decides which inputs are accepted and how each is read; it does not look at the fields.
Inputs: ``.jsonl``, ``.json`` (an array of objects), ``.parquet``, ``.csv`` (every column read as
text) and directories written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` gives its
``train`` split). An input that is missing, of another type, unreadable or empty is a ``ConfigError``.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError

_CHUNK = 1000  # rows tokenized per call of the (Rust, multi-threaded) batch tokenizer


def read_table(path: str | Path):
    """The rows of a data file or a ``save_to_disk`` directory as a ``datasets.Dataset``.

    Raises:
        ConfigError: the path is missing, of an unknown type, unreadable or has no rows.
    """
    p = Path(path)
    readers = {".jsonl": _read_json, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if p.is_dir():
        ds = _read_saved(p)
    elif not p.is_file():
        raise ConfigError([f"data file not found: {p} (HINT: check train.data.train / train.data.eval)"])
    elif p.suffix.lower() not in readers:
        raise ConfigError(
            [
                f"{p}: unsupported data file type {p.suffix or '(none)'!r}: expected .jsonl, .json, "
                ".parquet, .csv or a directory written by Dataset.save_to_disk"
            ]
        )
    elif _blank(p):
        raise ConfigError([f"{p}: the dataset is empty (0 rows)"])
    else:
        with tempfile.TemporaryDirectory(prefix="hpcft-data-") as tmp:  # keeps ~/.cache/huggingface clean
            ds = readers[p.suffix.lower()](p, tmp)
    if len(ds) == 0:
        raise ConfigError([f"{p}: the dataset is empty (0 rows)"])
    return ds


def _blank(p: Path) -> bool:
    """True if the file holds only whitespace (read until the first other byte)."""
    with open(p, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _read_json(p: Path, tmp: str):
    import datasets

    try:
        return datasets.Dataset.from_json(str(p), cache_dir=tmp, keep_in_memory=True)
    except datasets.exceptions.DatasetGenerationError as e:
        raise ConfigError([_json_problem(p) or f"{p}: cannot read as JSON: {e.__cause__ or e}"]) from None


def _json_problem(p: Path) -> str | None:
    """The first bad line of a jsonl file (pyarrow's own message does not say where)."""
    if p.suffix.lower() == ".json":
        try:
            json.loads(p.read_text())
        except json.JSONDecodeError as e:
            return f"{p}:{e.lineno}: not valid JSON: {e.msg}"
        return None
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                return f"{p}:{n}: not valid JSON: {e.msg}"
            if not isinstance(row, dict):
                return f"{p}:{n}: expected a JSON object per line, got {type(row).__name__}"
    return None


def _read_parquet(p: Path, tmp: str):
    import datasets

    return datasets.Dataset.from_parquet(str(p), cache_dir=tmp, keep_in_memory=True)


def _read_csv(p: Path, tmp: str):
    import datasets

    with open(p, newline="") as f:
        header = next(csv.reader(f), [])
    # Every column as text: pandas would read an output column of digits ("5") as int.
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return datasets.Dataset.from_csv(
        str(p), cache_dir=tmp, keep_in_memory=True, features=features, keep_default_na=False
    )


def _read_saved(p: Path):
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError:
        raise ConfigError(
            [
                f"{p}: a directory, but not one written by Dataset.save_to_disk "
                "(HINT: give a data file, or save the dataset with save_to_disk)"
            ]
        ) from None
    except IndexError:  # datasets cannot load a dataset it saved with no rows (no arrow files)
        raise ConfigError([f"{p}: the dataset is empty (0 rows)"]) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds and len(ds) != 1:
            raise ConfigError(
                [
                    f"{p}: a DatasetDict without a 'train' split (splits: {', '.join(ds)}) "
                    "(HINT: save the split you want with save_to_disk)"
                ]
            )
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return ds


def iter_rows(ds) -> Iterator[list[dict[str, Any]]]:
    """The rows of a ``datasets.Dataset`` as dicts, in chunks of ``_CHUNK``."""
    for batch in ds.iter(batch_size=_CHUNK):
        yield [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
