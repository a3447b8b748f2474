"""The tokenized-data cache on the shared filesystem, and the datasets of a job through it.

A tokenized dataset is saved under ``<cache_dir>/<key>/`` (default ``<run.runs_dir>/.cache/data``),
the key being a hash of the data's bytes, the tokenizer, the chat template, the options and
``DATA_PIPELINE_VERSION``. Global rank 0 builds a missing entry and publishes it with the one
protocol of ``hpcft.rundir.publish`` (staging dir, manifest, ``COMPLETE`` marker last, rename);
other ranks poll for the marker, then load it. No collective calls: ranks on other nodes wait
through the filesystem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError, HpcftError
from hpcft.rundir import publish as rundir_publish
from hpcft.train.data.formats import chat_template
from hpcft.train.data.pipeline import build_dataset
from hpcft.train.data.tokenize import DataOptions

log = logging.getLogger(__name__)

# Bump when the tokenized output or the cache layout changes: old cache entries stop matching.
# 3: entries are sealed by ``hpcft.rundir.publish`` (MANIFEST.json + COMPLETE, not HPCFT_COMPLETE).
DATA_PIPELINE_VERSION = "3"
CACHE_MARKER = rundir_publish.MARKER


def content_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a directory's file names and bytes."""
    p = Path(path)
    if not p.exists():
        raise ConfigError([f"data file not found: {p} (HINT: check train.data.train / train.data.eval)"])
    h = hashlib.sha256()
    for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p) if f != p else ''}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what tokenizing depends on: vocabulary, merges, normalizer, added and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = [
        type(tokenizer).__name__,
        tokenizer.bos_token,
        tokenizer.bos_token_id,
        tokenizer.eos_token,
        tokenizer.eos_token_id,
    ]
    return hashlib.sha256(f"{state}\0{json.dumps(specials)}".encode()).hexdigest()


def cache_key(path: str | Path, tokenizer, opts: DataOptions) -> str:
    """The cache entry name of ``path`` tokenized by ``tokenizer`` with ``opts``."""
    parts = {
        "version": DATA_PIPELINE_VERSION,
        "data": content_digest(path),
        **asdict(opts),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": chat_template(tokenizer),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def publish(ds, entry: Path) -> None:
    """Save ``ds`` as cache entry ``entry``: a staging dir beside it, sealed and renamed by ``rundir.publish``."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    staged = entry.parent / f".tmp-{entry.name}-{host}-{os.getpid()}"
    fields = {"rows": len(ds), "host": host, "time": time.time(), "version": DATA_PIPELINE_VERSION}
    try:
        ds.save_to_disk(str(staged))
        if not rundir_publish.publish(staged, entry, fields, replace=False):
            log.info("data cache %s was published by another job first; using it", entry.name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # left only if saving or sealing failed


def wait_for_marker(entry: Path, timeout_s: float, poll_s: float) -> None:
    """Poll the shared filesystem until ``entry``'s marker exists (built by global rank 0)."""
    deadline = time.monotonic() + timeout_s
    while not rundir_publish.is_sealed(entry):
        if time.monotonic() > deadline:
            raise HpcftError(
                f"waited {timeout_s / 60:.0f} min for the data cache {entry}, which global rank 0 builds",
                hint="see rank 0's log (RUN/logs/rank-0.log); for a very large dataset raise "
                "train.data.cache_wait_minutes",
            )
        time.sleep(poll_s)


def cached_dataset(
    path: str | Path,
    tokenizer,
    opts: DataOptions,
    cache_root: Path,
    *,
    rank: int = 0,
    wait_s: float = 4 * 3600,
    poll_s: float = 2.0,
):
    """The tokenized dataset of ``path`` from the cache; rank 0 builds a missing entry, others wait for it."""
    import datasets

    key = cache_key(path, tokenizer, opts)
    entry = Path(cache_root) / key
    if not rundir_publish.is_sealed(entry):
        if rank != 0:
            log.info("data cache wait %s (global rank 0 builds it)", key)
            wait_for_marker(entry, wait_s, poll_s)
        else:
            log.info("data cache miss %s: %s", key, path)
            publish(build_dataset(path, tokenizer, opts), entry)
            return datasets.load_from_disk(str(entry))
    log.info("data cache hit %s: %s", key, path)
    return datasets.load_from_disk(str(entry))


def cache_root(spec, run_dir: Path) -> Path:
    """``train.data.cache_dir``, else ``<run.runs_dir>/.cache/data``."""
    if spec.train.data.cache_dir:
        return Path(spec.train.data.cache_dir)
    runs_dir = Path(spec.run.runs_dir)
    return (runs_dir if runs_dir.is_absolute() else Path(run_dir).parent) / ".cache" / "data"


def build_datasets(spec, run_dir: Path, tokenizer) -> tuple[Any, Any | None]:
    """(train, eval or None) datasets of a job, through the shared cache; called on every rank."""
    import datasets

    datasets.disable_progress_bars()
    t = spec.train
    opts = DataOptions(t.data.format, t.seq_len, t.data.completion_only, t.packing)
    kwargs = {"rank": int(os.environ.get("RANK", "0")), "wait_s": t.data.cache_wait_minutes * 60.0}
    root = cache_root(spec, run_dir)
    train = cached_dataset(t.data.train, tokenizer, opts, root, **kwargs)
    evals = cached_dataset(t.data.eval, tokenizer, opts, root, **kwargs) if t.data.eval else None
    return train, evals
