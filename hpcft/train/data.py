"""SFT training data: read files, format samples, tokenize with completion-only labels, pack, cache.

This module decides what the model is trained on, token by token. It must not use collective calls
(``torch.distributed``): ranks on other nodes wait for the cache through the filesystem instead.

Inputs: ``.jsonl``, ``.json`` (an array of objects), ``.parquet``, ``.csv`` (every column read as
text) and directories written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` gives its
``train`` split).

Formats (``train.data.format``):
  - ``alpaca``: ``instruction``, optional ``input``, ``output``; rendered with ``ALPACA_PROMPT``
    as ``<bos> prompt output <eos>``; the loss covers ``output <eos>``.
  - ``chat``: ShareGPT ``conversations`` (``from`` human/gpt/system, ``value``) or ``messages``
    (``role``/``content``), rendered with the tokenizer's chat template, else with
    ``DEFAULT_CHAT_TEMPLATE``::

        <bos><|system|>\\n...\\n<|user|>\\n...\\n<|assistant|>\\n...<eos>\\n

    The loss covers each assistant turn's text up to and including the template's ``eos_token``
    (found by rendering growing prefixes of the conversation; a template whose rendering of a
    prefix is not a prefix of the whole is an error).
  - ``text``: a ``text`` field, ``<bos> text <eos>``, loss on every token.
  - ``auto``: picked from the fields of the first row.
With ``completion_only: false`` every token is learnt. Samples are cut to ``seq_len`` tokens; a
sample left with no token to learn is dropped (and counted in the log).

Packing (``train.packing``): samples are placed into rows of at most ``seq_len`` tokens (best-fit
decreasing) whose ``position_ids`` restart at 0 for every sample, with no ``attention_mask``.
Called without a KV cache (the Trainer's ``use_cache=False``; the collator passes it too),
transformers (``masking_utils.find_packed_sequence_indices``) turns that into a block-diagonal
causal mask for the sdpa, eager and flex attention of models built on ``masking_utils`` (Llama,
Mistral, Qwen, Gemma, ...), so samples never attend to each other. Where this does NOT hold:
flash-attention kernels detect packed rows from ``position_ids`` only for a batch of one row
(``modeling_flash_attention_utils._is_packed_sequence``; use ``batch_size: 1`` there), models that
build their own masks (remote code, ALiBi models such as Bloom) and recurrent/state-space layers
(Mamba, Jamba), which carry state across the samples of a row.

Cache: a tokenized dataset is saved under ``<cache_dir>/<key>/`` (default
``<run.runs_dir>/.cache/data``), the key being a hash of the data's bytes, the tokenizer, the chat
template, the options and ``DATA_PIPELINE_VERSION``. Global rank 0 builds it (temp dir, rename,
then the ``CACHE_MARKER`` file); other ranks poll for the marker, then load it.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError, HpcftError
from hpcft.runs import write_atomic

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips (torch.nn.CrossEntropyLoss ignore_index)
DATA_PIPELINE_VERSION = "2"  # bump when the tokenized output changes: old cache entries stop matching
FORMATS = ("alpaca", "chat", "text")
CACHE_MARKER = "HPCFT_COMPLETE"

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

_CHUNK = 1000  # rows tokenized per call of the (Rust, multi-threaded) batch tokenizer
_MAX_PROBLEMS = 20

Piece = tuple[str | list[int], bool]  # text (or token ids) and whether the loss covers it


class RowError(ValueError):
    """One row does not fit its format (turned into a ``ConfigError`` naming the row)."""


@dataclass(frozen=True)
class DataOptions:
    """What, besides the data and the tokenizer, decides the tokenized dataset."""

    format: str = "auto"
    seq_len: int = 512
    completion_only: bool = True
    packing: bool = False


# --- reading -------------------------------------------------------------------------------------


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


# --- formats -------------------------------------------------------------------------------------


def detect_format(row: dict[str, Any]) -> str:
    """``alpaca``, ``chat`` or ``text`` from the fields of a row."""
    if "instruction" in row and "output" in row:
        return "alpaca"
    if row.get("conversations") is not None or row.get("messages") is not None:
        return "chat"
    if "text" in row:
        return "text"
    raise ConfigError(
        [
            f"cannot tell the data format from the fields {sorted(row)}: expected instruction/output "
            "(alpaca), conversations or messages (chat), or text (HINT: set train.data.format)"
        ]
    )


def _text_field(row: dict[str, Any], name: str, fmt: str, required: bool = True) -> str:
    value = row.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise RowError(f"missing field '{name}' (format {fmt})")
    if not isinstance(value, str):
        raise RowError(f"field '{name}' is {type(value).__name__}, expected text (format {fmt})")
    return value


def _prompt_completion(row: dict[str, Any], fmt: str) -> tuple[str, str]:
    if fmt == "text":
        return "", _text_field(row, "text", fmt)
    instruction, output = _text_field(row, "instruction", fmt), _text_field(row, "output", fmt)
    inp = _text_field(row, "input", fmt, required=False)
    template = ALPACA_PROMPT_INPUT if inp else ALPACA_PROMPT
    return template.format(instruction=instruction, input=inp), output


def split_sample(row: dict[str, Any], fmt: str, where: str) -> tuple[str, str]:
    """(prompt, completion) of an ``alpaca`` or ``text`` row; the loss covers only the completion."""
    try:
        return _prompt_completion(row, fmt)
    except RowError as e:
        raise ConfigError([f"{where}: {e}"]) from None


def chat_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The ``messages`` (role/content) or ShareGPT ``conversations`` (from/value) of a row, as messages."""
    if row.get("messages") is not None:
        key, role_key, text_key, roles = "messages", "role", "content", None
    elif row.get("conversations") is not None:
        key, role_key, text_key, roles = "conversations", "from", "value", SHAREGPT_ROLES
    else:
        raise RowError("missing field 'conversations' or 'messages' (format chat)")
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise RowError(f"field '{key}' must be a non-empty list of turns, got {turns!r:.60}")
    out = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {i} of '{key}' is {type(turn).__name__}, expected an object")
        try:
            role, text = (_text_field(turn, k, "chat") for k in (role_key, text_key))
        except RowError as e:
            raise RowError(f"turn {i} of '{key}': {e}") from None
        if roles is not None and role not in roles:
            raise RowError(f"turn {i} of '{key}': field 'from' is {role!r}, expected one of {', '.join(roles)}")
        out.append({"role": roles[role] if roles else role, "content": text})
    return out


def chat_template(tokenizer) -> str:
    """The tokenizer's chat template, else ``DEFAULT_CHAT_TEMPLATE``."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the one apply_chat_template uses by default
        template = template.get("default")
    return template or DEFAULT_CHAT_TEMPLATE


def chat_pieces(messages: list[dict[str, str]], tokenizer, template: str, completion_only: bool) -> list[Piece]:
    """The rendered conversation cut into pieces; with ``completion_only`` only assistant text is learnt."""

    import jinja2

    def render(msgs: list[dict[str, str]], gen: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(
                msgs, chat_template=template, tokenize=False, add_generation_prompt=gen
            )
        except (jinja2.TemplateError, ValueError) as e:  # e.g. raise_exception('roles must alternate')
            raise RowError(f"the chat template rejects the conversation: {e}") from None

    full = render(messages)
    if not completion_only:
        return [(full, True)]
    pieces: list[Piece] = []
    done = 0
    eos = tokenizer.eos_token or ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, upto = render(messages[:i], gen=True), render(messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(head) and len(head) >= done):
            raise RowError(
                f"the chat template renders turn {i + 1} differently inside the whole conversation, so its "
                "assistant text cannot be located (HINT: set train.data.completion_only: false)"
            )
        body = full[len(head) : len(upto)]
        cut = body.rfind(eos) + len(eos) if eos and eos in body else len(body)
        pieces += [(full[done : len(head)], False), (body[:cut], True), (body[cut:], False)]
        done = len(upto)
    return [*pieces, (full[done:], False)]


def sample_pieces(row: dict[str, Any], fmt: str, tokenizer, template: str, completion_only: bool) -> list[Piece]:
    """The pieces of one row in format ``fmt``; raises ``RowError`` if the row does not fit it."""
    if fmt == "chat":
        return chat_pieces(chat_messages(row), tokenizer, template, completion_only)
    prompt, completion = _prompt_completion(row, fmt)
    return completion_pieces(tokenizer, prompt, completion, learn_prompt=fmt == "text" or not completion_only)


def completion_pieces(tokenizer, prompt: str, completion: str, learn_prompt: bool) -> list[Piece]:
    """``<bos> prompt completion <eos>``; the loss covers ``completion <eos>`` (and the prompt if asked)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [(bos, learn_prompt), (prompt, learn_prompt), (completion, True), (eos, True)]


# --- tokenizing ----------------------------------------------------------------------------------


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


# --- packing -------------------------------------------------------------------------------------


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


def load_dataset(
    path: str | Path, fmt: str, tokenizer, seq_len: int, *, completion_only: bool = True, packing: bool = False
):
    """A tokenized (and optionally packed) ``datasets.Dataset`` of ``path``, built now, not cached."""
    return build_dataset(path, tokenizer, DataOptions(fmt, seq_len, completion_only, packing))


def build_dataset(path: str | Path, tokenizer, opts: DataOptions):
    """Read, format, tokenize and (with ``opts.packing``) pack ``path``; see the module docstring."""
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


# --- cache ---------------------------------------------------------------------------------------


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
    """Save ``ds`` as cache entry ``entry``: temp dir, atomic rename, then the marker file."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{socket.gethostname()}-{os.getpid()}"
    try:
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            log.info("data cache %s was published by another job first; using it", entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {"rows": len(ds), "host": socket.gethostname(), "time": time.time(), "version": DATA_PIPELINE_VERSION}
    write_atomic(entry / CACHE_MARKER, json.dumps(info) + "\n")


def wait_for_marker(entry: Path, timeout_s: float, poll_s: float) -> None:
    """Poll the shared filesystem until ``entry``'s marker exists (built by global rank 0)."""
    deadline = time.monotonic() + timeout_s
    while not (entry / CACHE_MARKER).exists():
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
    if not (entry / CACHE_MARKER).exists():
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


# --- batches -------------------------------------------------------------------------------------


class SFTCollator:
    """Pads rows to the longest of the batch (right side) and returns long tensors.

    Unpacked rows get an ``attention_mask``. Packed rows get ``position_ids``, no mask and
    ``use_cache=False`` (a model called with a KV cache does not look for packed rows); their
    padding is a segment of its own (positions from 0), so no real token attends to it.
    """

    def __init__(self, pad_id: int, packing: bool) -> None:
        self.pad_id = pad_id
        self.packing = packing

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

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
