"""Training data: read samples, format prompts, tokenize with completion-only labels.

Formats: ``alpaca`` (instruction / input / output; loss on the output only) and ``text``
(a ``text`` field; loss on every token). ``auto`` picks by the fields of the first row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError

IGNORE_INDEX = -100  # label value the loss skips (torch.nn.CrossEntropyLoss ignore_index)

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a jsonl file; a bad line is an error naming the line."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError([f"data file not found: {path}"]) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError([f"{path}:{n}: not valid JSON: {e.msg}"]) from None
        if not isinstance(row, dict):
            raise ConfigError([f"{path}:{n}: expected a JSON object per line"])
        rows.append(row)
    if not rows:
        raise ConfigError([f"{path}: the dataset is empty"])
    return rows


def detect_format(row: dict[str, Any]) -> str:
    """``alpaca`` or ``text`` from the fields of a row."""
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    raise ConfigError(
        [f"cannot tell the data format from the fields {sorted(row)}: expected instruction/output or text"]
    )


def split_sample(row: dict[str, Any], fmt: str, where: str) -> tuple[str, str]:
    """(prompt, completion) of one row; the loss covers only the completion."""
    need = ("instruction", "output") if fmt == "alpaca" else ("text",)
    missing = [k for k in need if not isinstance(row.get(k), str)]
    if missing:
        raise ConfigError([f"{where}: missing or non-text field {', '.join(missing)} for format {fmt}"])
    if fmt == "text":
        return "", row["text"]
    template = ALPACA_PROMPT_INPUT if row.get("input") else ALPACA_PROMPT
    return template.format(instruction=row["instruction"], input=row.get("input", "")), row["output"]


def tokenize_sample(tokenizer, prompt: str, completion: str, seq_len: int) -> dict[str, list[int]]:
    """input_ids = [bos] prompt completion [eos], truncated; labels mask the prompt."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p_ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + c_ids)[:seq_len]
    labels = ([IGNORE_INDEX] * len(p_ids) + c_ids)[:seq_len]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def load_dataset(path: str, fmt: str, tokenizer, seq_len: int):
    """A tokenized ``datasets.Dataset`` of the file at ``path``."""
    import datasets

    rows = read_rows(path)
    fmt = detect_format(rows[0]) if fmt == "auto" else fmt
    samples = []
    for n, row in enumerate(rows, 1):
        prompt, completion = split_sample(row, fmt, f"{path}: row {n}")
        samples.append(tokenize_sample(tokenizer, prompt, completion, seq_len))
    return datasets.Dataset.from_list(samples)
