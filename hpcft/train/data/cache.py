"""The tokenized-data cache on the shared filesystem, and the datasets of a job through it.

A tokenized dataset is saved under ``<cache_dir>/<key>/`` (default ``<run.runs_dir>/.cache/data``),
the key being a hash of the data's bytes, the tokenizer, the chat template, the options and
``DATA_PIPELINE_VERSION``. Global rank 0 builds a missing entry and publishes it with the one
protocol of ``hpcft.rundir.publish`` (staging dir, manifest, ``COMPLETE`` marker last, rename);
the first rank of every other node waits for the marker (polling the shared filesystem with backoff),
reads the entry once into the node's page cache and tells the other ranks of its node through a
node-local file (``/dev/shm``), which names the entry: they never touch the shared filesystem until
they map the entry, and never hash the raw data. No collective calls: nothing is set up yet.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
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


# The other nodes' first ranks poll the shared filesystem for rank 0's entry: quickly at first (a small dataset
# is tokenized in a fraction of a second, and a 1 s first poll cost every first job 1-1.5 s before its first
# step: benchmarks/RESULTS.md, P15), then backing off to one stat per node every 30 s while rank 0 tokenizes
# for hours. The node's other ranks poll node-local memory the same way, up to twice a second.
FIRST_POLL_S = 0.02
MAX_POLL_S = 30.0
MAX_NODE_POLL_S = 0.5


def _poll(ready: Callable[[], bool], timeout_s: float, poll_s: float, ceiling: float, late: HpcftError) -> None:
    """Until ``ready()``, looking again after ``poll_s`` × 1.25 per look up to ``ceiling`` (noticed at most a quarter
    of the wait so far late); ``late`` raised after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise late
        time.sleep(poll_s)
        poll_s = min(poll_s * 1.25, ceiling)


def wait_for_marker(entry: Path, timeout_s: float, poll_s: float) -> None:
    """Poll the shared filesystem until ``entry``'s marker exists (built by global rank 0), backing off."""
    late = HpcftError(f"waited {timeout_s / 60:.0f} min for the data cache {entry}, which global rank 0 builds",
                      hint="see rank 0's lines (hpcft logs RUN --rank 0); for a very large dataset raise "
                      "train.data.cache_wait_minutes")  # fmt: skip
    _poll(lambda: rundir_publish.is_sealed(entry), timeout_s, poll_s, MAX_POLL_S, late)


def node_signal(name: str) -> Path:
    """The node-local file by which a node's first rank tells the others where cache entry ``name`` is.

    Node-local (``/dev/shm``, else the temp dir) and named by host and parent process: the ranks of one
    launch on one node share their launcher (torchrun's agent, the deepspeed launcher, mpirun's daemon,
    slurmstepd), so a file of an earlier launch or of another job on the node never matches.
    """
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    return base / f"hpcft-{socket.gethostname()}-{os.getppid()}-{name}.ready"


def warm_page_cache(entry: Path) -> None:
    """Read every file of ``entry`` once, so the node's ranks map it from memory, not each from the shared FS."""
    for f in sorted(p for p in entry.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def tell_node(signal: Path, entry: Path) -> None:
    """Publish ``entry`` to the node's other ranks (atomically), and remove the file when this rank exits."""
    tmp = signal.with_name(signal.name + f".{os.getpid()}")
    tmp.write_text(str(entry))
    os.replace(tmp, signal)
    atexit.register(lambda: signal.unlink(missing_ok=True))


def wait_for_node(signal: Path, timeout_s: float, poll_s: float = FIRST_POLL_S) -> Path:
    """The entry the node's first rank named in ``signal`` (polling node-local memory, not the shared FS)."""
    late = HpcftError(
        f"waited {timeout_s / 60:.0f} min for this node's first rank to find the data cache",
        hint="see the first rank's log on this node (hpcft logs RUN --node NODE)",
    )
    _poll(signal.exists, timeout_s, poll_s, MAX_NODE_POLL_S, late)
    return Path(signal.read_text())


def cached_dataset(
    path: str | Path,
    tokenizer,
    opts: DataOptions,
    cache_root: Path,
    *,
    rank: int = 0,
    local_rank: int = 0,
    name: str = "train",
    wait_s: float = 4 * 3600,
    poll_s: float = FIRST_POLL_S,
):
    """The tokenized dataset of ``path`` from the cache; rank 0 builds a missing entry, others wait for it.

    ``local_rank`` 0 of each node is the node's one waiter; the node's other ranks learn the entry from it.
    """
    import datasets

    signal = node_signal(name)
    if local_rank != 0 and rank != 0:
        entry = wait_for_node(signal, wait_s, poll_s)
        return datasets.load_from_disk(str(entry))
    key = cache_key(path, tokenizer, opts)
    entry = Path(cache_root) / key
    if rundir_publish.is_sealed(entry):
        log.info("data cache hit %s: %s", key, path)
    elif rank != 0:
        log.info("data cache wait %s (global rank 0 builds it)", key)
        wait_for_marker(entry, wait_s, poll_s)
    else:
        log.info("data cache miss %s: %s", key, path)
        publish(build_dataset(path, tokenizer, opts), entry)
    if rank != 0:
        warm_page_cache(entry)
    tell_node(signal, entry)
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
    kwargs = {"rank": int(os.environ.get("RANK", "0")), "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
              "wait_s": t.data.cache_wait_minutes * 60.0}  # fmt: skip
    root = cache_root(spec, run_dir)
    train = cached_dataset(t.data.train, tokenizer, opts, root, name="train", **kwargs)
    evals = cached_dataset(t.data.eval, tokenizer, opts, root, name="eval", **kwargs) if t.data.eval else None
    return train, evals
