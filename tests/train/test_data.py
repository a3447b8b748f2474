"""The SFT data pipeline on the demo tokenizer and model: files, formats, labels, packing, cache, errors.

Expectations are written out by hand (prompt strings, rendered conversations, token counts from the
tokenizer itself), never taken from the pipeline under test.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import threading
import time

import pytest

from hpcft.errors import ConfigError, HpcftError

pytestmark = pytest.mark.train

IGNORE = -100
ALPACA = [
    {"instruction": "Reverse the word.", "input": "apple", "output": "elppa"},
    {"instruction": "Count the letters of the word.", "input": "river", "output": "5"},
    {"instruction": "Say hello.", "input": "", "output": "hello"},
]
ALPACA_TEXT = [
    "<s>### Instruction:\nReverse the word.\n\n### Input:\napple\n\n### Response:\nelppa</s>",
    "<s>### Instruction:\nCount the letters of the word.\n\n### Input:\nriver\n\n### Response:\n5</s>",
    "<s>### Instruction:\nSay hello.\n\n### Response:\nhello</s>",
]
SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Reverse apple"},
        {"from": "gpt", "value": "elppa"},
        {"from": "human", "value": "Upper river"},
        {"from": "gpt", "value": "RIVER"},
    ]
}
# What the demo template ("<|role|>\n content, eos after assistant turns", jinja trim_blocks) renders:
SHAREGPT_TEXT = (
    "<|system|>\nBe brief.<|user|>\nReverse apple<|assistant|>\nelppa</s><|user|>\nUpper river<|assistant|>\nRIVER</s>"
)


@pytest.fixture(scope="module")
def tok(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir / "model")


@pytest.fixture(scope="module")
def data():
    from hpcft.train import data

    return data


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def learnt(tok, sample) -> list[str]:
    """Decoded runs of consecutive labelled tokens."""
    runs, cur = [], []
    for i, label in zip(sample["input_ids"], sample["labels"], strict=True):
        if label != IGNORE:
            assert label == i
            cur.append(i)
        elif cur:
            runs, cur = [*runs, tok.decode(cur)], []
    return runs + ([tok.decode(cur)] if cur else [])


def write(path, rows) -> str:
    """Rows as jsonl / json / parquet / csv / a save_to_disk directory, by the path's suffix."""
    import datasets

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


# --- files and formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.parquet", "d.csv", "saved_dir"])
def test_every_file_type_gives_the_hand_written_samples(tmp_path, tok, data, name):
    path = write(tmp_path / name, ALPACA)
    ds = data.load_dataset(path, "auto", tok, seq_len=256)
    assert [tok.decode(r["input_ids"]) for r in ds] == ALPACA_TEXT  # csv keeps "5" as text
    assert [learnt(tok, r) for r in ds] == [["elppa</s>"], ["5</s>"], ["hello</s>"]]


def test_dataset_dict_directory_uses_its_train_split(tmp_path, tok, data):
    import datasets

    splits = {"train": ALPACA[:1], "test": ALPACA[1:]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / "dd")
    )
    ds = data.load_dataset(tmp_path / "dd", "alpaca", tok, seq_len=256)
    assert [tok.decode(r["input_ids"]) for r in ds] == ALPACA_TEXT[:1]


def test_alpaca_labels_exactly_the_output_and_eos(tmp_path, tok, data):
    ds = data.load_dataset(write(tmp_path / "a.jsonl", ALPACA[:1]), "alpaca", tok, seq_len=256)
    prompt = "### Instruction:\nReverse the word.\n\n### Input:\napple\n\n### Response:\n"
    expected = [tok.bos_token_id, *ids(tok, prompt), *ids(tok, "elppa"), tok.eos_token_id]
    n_prompt = 1 + len(ids(tok, prompt))
    assert ds[0]["input_ids"] == expected
    assert ds[0]["labels"] == [IGNORE] * n_prompt + expected[n_prompt:]
    full = data.load_dataset(write(tmp_path / "b.jsonl", ALPACA[:1]), "alpaca", tok, 256, completion_only=False)
    assert full[0]["labels"] == [IGNORE, *expected[1:]]  # position 0 is never predicted


def test_chat_sharegpt_learns_only_the_assistant_turns(tmp_path, tok, data):
    ds = data.load_dataset(write(tmp_path / "c.jsonl", [SHAREGPT]), "chat", tok, seq_len=256)
    row = ds[0]
    assert row["input_ids"] == ids(tok, SHAREGPT_TEXT)
    head1 = "<|system|>\nBe brief.<|user|>\nReverse apple<|assistant|>\n"
    head2 = head1 + "elppa</s><|user|>\nUpper river<|assistant|>\n"
    a, b = len(ids(tok, head1)), len(ids(tok, head2))
    want = set(range(a, a + len(ids(tok, "elppa</s>")))) | set(range(b, b + len(ids(tok, "RIVER</s>"))))
    assert {i for i, label in enumerate(row["labels"]) if label != IGNORE} == want
    assert learnt(tok, row) == ["elppa</s>", "RIVER</s>"]
    full = data.load_dataset(write(tmp_path / "d.jsonl", [SHAREGPT]), "chat", tok, 256, completion_only=False)
    assert full[0]["labels"] == [IGNORE, *row["input_ids"][1:]]


def test_chat_messages_equal_their_sharegpt_form(tmp_path, tok, data):
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    messages = {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in SHAREGPT["conversations"]]}
    a = data.load_dataset(write(tmp_path / "m.parquet", [messages]), "auto", tok, seq_len=256)
    b = data.load_dataset(write(tmp_path / "s.jsonl", [SHAREGPT]), "auto", tok, seq_len=256)
    assert a[0] == b[0]


def test_chat_without_a_tokenizer_template_uses_the_documented_default(tmp_path, demo_dir, data):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(demo_dir / "model")
    plain.chat_template = None
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ds = data.load_dataset(write(tmp_path / "c.jsonl", [row]), "chat", plain, seq_len=64)
    assert plain.decode(ds[0]["input_ids"]) == "<s><|user|>\nhi\n<|assistant|>\nyo</s>\n"
    assert learnt(plain, ds[0]) == ["yo</s>"]


def test_text_learns_every_token_and_truncates(tmp_path, tok, data):
    path = write(tmp_path / "t.jsonl", [{"text": "apple river stone cloud garden"}])
    (row,) = data.load_dataset(path, "auto", tok, seq_len=256)
    assert row["input_ids"] == [tok.bos_token_id, *ids(tok, "apple river stone cloud garden"), tok.eos_token_id]
    assert row["labels"] == [IGNORE, *row["input_ids"][1:]]
    (short,) = data.load_dataset(path, "text", tok, seq_len=8)
    assert short["input_ids"] == row["input_ids"][:8] and short["labels"] == row["labels"][:8]


def test_samples_whose_completion_is_cut_away_are_dropped(tmp_path, tok, data, caplog):
    long_prompt = {"instruction": " ".join(["apple"] * 40), "input": "", "output": "yes"}
    path = write(tmp_path / "a.jsonl", [long_prompt, ALPACA[2]])
    with caplog.at_level(logging.WARNING, "hpcft"):
        ds = data.load_dataset(path, "alpaca", tok, seq_len=24)
    assert len(ds) == 1 and "dropped 1 of 2 samples" in caplog.text
    with pytest.raises(ConfigError, match="no sample has a token to learn within seq_len 24"):
        data.load_dataset(write(tmp_path / "b.jsonl", [long_prompt]), "alpaca", tok, seq_len=24)


# --- packing -------------------------------------------------------------------------------------


def segments(row) -> list[tuple[int, int]]:
    """(start, end) of each sample in a packed row, from where position_ids restart at 0."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
    return list(zip(starts, [*starts[1:], len(row["position_ids"])], strict=True))


def test_best_fit_decreasing_fills_rows(data):
    assert sorted(map(sorted, data.pack_rows([6, 5, 4, 3, 2], 10))) == [[0, 2], [1, 3, 4]]
    rows = data.pack_rows([7, 7, 7, 3, 3, 3], 10)
    assert len(rows) == 3 and sorted(i for r in rows for i in r) == list(range(6))


def test_packed_rows_hold_exactly_the_unpacked_samples(demo_dir, tok, data):
    path = demo_dir / "data" / "train.jsonl"
    plain = data.load_dataset(path, "alpaca", tok, seq_len=128)
    packed = data.load_dataset(path, "alpaca", tok, seq_len=128, packing=True)
    assert set(plain.column_names) == {"input_ids", "labels"}
    assert len(packed) < len(plain) / 3 and max(len(r) for r in packed["input_ids"]) <= 128
    pieces = []
    for row in packed:
        for s, e in segments(row):
            assert row["position_ids"][s:e] == list(range(e - s))
            pieces.append((tuple(row["input_ids"][s:e]), tuple(row["labels"][s:e])))
    assert sorted(pieces) == sorted(zip(map(tuple, plain["input_ids"]), map(tuple, plain["labels"]), strict=True))


def test_collators_pad_with_mask_or_with_a_separate_position_segment(tok, data):
    a = {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "position_ids": [0, 1, 0]}
    b = {"input_ids": [8], "labels": [IGNORE], "position_ids": [0]}
    packed = data.make_collator(tok, packing=True)([a, b])
    assert set(packed) == {"input_ids", "labels", "position_ids", "use_cache"}  # no attention_mask
    assert packed["use_cache"] is False  # with a KV cache, transformers would not look for packed rows
    assert packed["input_ids"].tolist() == [[5, 6, 7], [8, tok.pad_token_id, tok.pad_token_id]]
    assert packed["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert packed["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
    plain = data.make_collator(tok, packing=False)([a, b])
    assert set(plain) == {"input_ids", "labels", "attention_mask"}
    assert plain["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_do_not_see_each_other(demo_dir, tok, data, attn):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_dir / "model", attn_implementation=attn).eval()
    packed = data.load_dataset(demo_dir / "data" / "eval.jsonl", "alpaca", tok, seq_len=128, packing=True)
    rows = sorted(packed, key=lambda r: -len(r["input_ids"]))
    row, other = rows[0], rows[-1]  # a full row, and a shorter one so the batch has padding
    assert len(segments(row)) >= 2 and len(other["input_ids"]) < len(row["input_ids"])
    batch = data.make_collator(tok, packing=True)([other, row])
    with torch.no_grad():
        out = model(**batch)
        causal = model(input_ids=batch["input_ids"]).logits  # the same row as one sequence: no isolation
        total = 0.0
        for s, e in segments(row):
            alone = model(input_ids=torch.tensor([row["input_ids"][s:e]]), labels=torch.tensor([row["labels"][s:e]]))
            torch.testing.assert_close(out.logits[1, s:e], alone.logits[0], atol=1e-5, rtol=0)
            total += alone.loss.item() * sum(x != IGNORE for x in row["labels"][s + 1 : e])
        s, e = segments(row)[1]
        assert (causal[1, s:e] - out.logits[1, s:e]).abs().max() > 1e-3  # the check above can fail
        n = sum(x != IGNORE for x in row["labels"][1:])
        one = model(**data.make_collator(tok, packing=True)([row]))
        assert one.loss.item() * n == pytest.approx(total, rel=1e-5)  # no loss across a sample boundary


@pytest.mark.parametrize("packing", [False, True])
def test_trainer_sees_every_real_token_once_per_epoch(demo_dir, tok, data, tmp_path, packing):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    path = demo_dir / "data" / "eval.jsonl"
    ds = data.load_dataset(path, "alpaca", tok, seq_len=128, packing=packing)
    real = sum(len(r) for r in data.load_dataset(path, "alpaca", tok, seq_len=128)["input_ids"])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    model = AutoModelForCausalLM.from_pretrained(demo_dir / "model")
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, data_collator=data.make_collator(tok, packing)
    )
    result = trainer.train()
    assert trainer.state.num_input_tokens_seen == real
    assert math.isfinite(result.training_loss)


# --- cache ---------------------------------------------------------------------------------------


def test_second_build_is_a_cache_hit_without_tokenizing(tmp_path, tok, data, monkeypatch, caplog):
    path = write(tmp_path / "a.jsonl", ALPACA)
    opts = data.DataOptions("alpaca", 64, True, True)
    with caplog.at_level(logging.INFO, "hpcft"):
        first = data.cached_dataset(path, tok, opts, tmp_path / "cache")
        key = data.cache_key(path, tok, opts)
        marker = tmp_path / "cache" / key / data.CACHE_MARKER
        built = marker.stat().st_mtime_ns

        def no_tokenizing(*args, **kwargs):
            raise AssertionError("tokenized again on a cache hit")

        monkeypatch.setattr(data.pipeline, "tokenize_rows", no_tokenizing)
        second = data.cached_dataset(path, tok, opts, tmp_path / "cache")
    assert f"data cache miss {key}" in caplog.text and f"data cache hit {key}" in caplog.text
    assert marker.stat().st_mtime_ns == built and second[:] == first[:]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key]  # no temp dir left behind


def test_cache_key_follows_content_and_options_not_the_path(tmp_path, tok, data, demo_dir):
    from transformers import AutoTokenizer

    path = write(tmp_path / "a.jsonl", ALPACA)
    opts = data.DataOptions("alpaca", 64, True, False)
    key = data.cache_key(path, tok, opts)
    assert data.cache_key(write(tmp_path / "copy.jsonl", ALPACA), tok, opts) == key
    assert data.cache_key(write(tmp_path / "more.jsonl", [*ALPACA, ALPACA[0]]), tok, opts) != key
    for changed in ({"seq_len": 65}, {"packing": True}, {"completion_only": False}, {"format": "auto"}):
        assert data.cache_key(path, tok, data.DataOptions(**{**opts.__dict__, **changed})) != key, changed
    other = AutoTokenizer.from_pretrained(demo_dir / "model")
    assert data.cache_key(path, other, opts) == key
    other.chat_template = "{{ messages }}"
    assert data.cache_key(path, other, opts) != key
    saved = write(tmp_path / "saved", ALPACA)
    assert data.cache_key(saved, tok, opts) == data.cache_key(saved, tok, opts)


def test_other_ranks_wait_for_rank_0_and_never_build(tmp_path, tok, data, monkeypatch, caplog):
    path = write(tmp_path / "a.jsonl", ALPACA)
    opts = data.DataOptions("alpaca", 64, True, False)
    ready = data.build_dataset(path, tok, opts)
    entry = tmp_path / "cache" / data.cache_key(path, tok, opts)
    monkeypatch.setattr(data.cache, "build_dataset", lambda *a: pytest.fail("rank 1 built the cache"))
    with pytest.raises(HpcftError, match="which global rank 0 builds"):
        data.cached_dataset(path, tok, opts, tmp_path / "cache", rank=1, wait_s=0.2, poll_s=0.05)
    rank0 = threading.Timer(0.3, data.publish, (ready, entry))
    rank0.start()
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, "hpcft"):
        got = data.cached_dataset(path, tok, opts, tmp_path / "cache", rank=1, wait_s=30, poll_s=0.05)
    rank0.join()
    assert time.monotonic() - t0 >= 0.3 and got[:] == ready[:]
    assert "data cache wait" in caplog.text


def test_build_datasets_caches_under_the_runs_dir_or_cache_dir(tmp_path, tok, data):
    from hpcft.spec import build_spec

    train, evals = write(tmp_path / "t.jsonl", ALPACA), write(tmp_path / "e.jsonl", ALPACA[:1])
    raw = {
        "run": {"runs_dir": str(tmp_path / "runs")},
        "train": {
            "model": "m",
            "seq_len": 64,
            "packing": True,
            "data": {"train": train, "eval": evals, "format": "alpaca"},
        },
    }
    train_ds, eval_ds = data.build_datasets(build_spec(raw), tmp_path / "runs" / "job-1", tok)
    assert "position_ids" in train_ds.column_names and len(eval_ds) == 1
    assert len(list((tmp_path / "runs" / ".cache" / "data").glob(f"*/{data.CACHE_MARKER}"))) == 2
    raw["train"]["data"]["cache_dir"] = str(tmp_path / "elsewhere")
    data.build_datasets(build_spec(raw), tmp_path / "runs" / "job-1", tok)
    assert len(list((tmp_path / "elsewhere").glob(f"*/{data.CACHE_MARKER}"))) == 2


# --- errors --------------------------------------------------------------------------------------


BAD_ROWS = [
    (
        "a.jsonl",
        [ALPACA[0], ALPACA[1], {"instruction": "x", "input": ""}],
        "alpaca",
        ["row 3: missing field 'output' (format alpaca)"],
    ),
    (
        "b.jsonl",
        [ALPACA[0], {"instruction": "x", "output": 5}],
        "alpaca",
        ["row 2: field 'output' is int, expected text"],
    ),
    (
        "c.jsonl",
        [SHAREGPT, {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}],
        "chat",
        ["row 2: turn 2 of 'conversations': missing field 'value'"],
    ),
    (
        "d.jsonl",
        [{"conversations": [{"from": "bot", "value": "hi"}]}],
        "chat",
        ["row 1: turn 1 of 'conversations': field 'from' is 'bot', expected one of human"],
    ),
    ("e.jsonl", [{"text": "a"}, {"body": "b"}, {"body": "c"}], "text", ["row 2: missing field 'text'", "row 3"]),
    ("f.jsonl", [{"prompt": "a"}], "auto", ["cannot tell the data format from the fields ['prompt']"]),
    ("g.jsonl", ALPACA, "sharegpt", ["unknown format 'sharegpt', expected one of auto, alpaca, chat, text"]),
]


@pytest.mark.parametrize(("name", "rows", "fmt", "messages"), BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_bad_rows_are_named(tmp_path, tok, data, name, rows, fmt, messages):
    with pytest.raises(ConfigError) as err:
        data.load_dataset(write(tmp_path / name, rows), fmt, tok, seq_len=64)
    for message in messages:
        assert message in str(err.value)


def test_chat_templates_that_cannot_be_split_are_named(tmp_path, demo_dir, data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_dir / "model")
    path = write(tmp_path / "c.jsonl", [SHAREGPT])
    tok.chat_template = "{{ raise_exception('no system turns') if messages[0]['role'] == 'system' }}"
    with pytest.raises(ConfigError, match="row 1: the chat template rejects the conversation: no system turns"):
        data.load_dataset(path, "chat", tok, seq_len=64)
    tok.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"  # not prefix-stable
    )
    with pytest.raises(ConfigError, match="row 1: the chat template renders turn 3 differently"):
        data.load_dataset(path, "chat", tok, seq_len=64)
    assert len(data.load_dataset(path, "chat", tok, seq_len=64, completion_only=False)) == 1


def test_bad_files_are_named(tmp_path, tok, data):
    import datasets

    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": oops}\n')
    (tmp_path / "d.txt").write_text("hello")
    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "empty_dir"))
    (tmp_path / "plain_dir").mkdir()
    for name, message in [
        ("missing.jsonl", "data file not found"),
        ("empty.jsonl", "the dataset is empty (0 rows)"),
        ("empty_dir", "the dataset is empty (0 rows)"),
        ("bad.jsonl", "bad.jsonl:2: not valid JSON"),
        ("d.txt", "unsupported data file type '.txt'"),
        ("plain_dir", "not one written by Dataset.save_to_disk"),
    ]:
        with pytest.raises(ConfigError, match=None) as err:
            data.load_dataset(tmp_path / name, "auto", tok, seq_len=64)
        assert message in str(err.value), name
    with pytest.raises(ConfigError, match="data file not found"):
        data.cache_key(tmp_path / "missing.jsonl", tok, data.DataOptions())


def test_a_nodes_other_ranks_learn_the_entry_from_its_first_rank(tmp_path, tok, data):
    """A node's local ranks > 0 neither hash the data nor look at the shared cache: they wait on node memory."""
    path = write(tmp_path / "a.jsonl", ALPACA)
    opts = data.DataOptions("alpaca", 64, True, False)
    ready = data.build_dataset(path, tok, opts)
    data.publish(ready, tmp_path / "cache" / data.cache_key(path, tok, opts))
    name = f"test-{time.monotonic_ns()}"
    got = {}

    # Paths that do not exist: the local rank can only succeed through the node-local signal.
    def local1() -> None:
        got["local1"] = data.cached_dataset(tmp_path / "missing.jsonl", tok, opts, tmp_path / "no-cache", rank=3,
                                            local_rank=1, name=name, wait_s=30)  # fmt: skip

    other = threading.Thread(target=local1)
    other.start()
    time.sleep(0.3)
    got["local0"] = data.cached_dataset(path, tok, opts, tmp_path / "cache", rank=2, local_rank=0, name=name)
    other.join(30)
    assert got["local1"][:] == got["local0"][:] == ready[:]
    assert data.cache.node_signal(name).read_text() == str(tmp_path / "cache" / data.cache_key(path, tok, opts))


@pytest.mark.parametrize("wait", ["marker", "node"])
def test_cache_waits_look_again_within_tens_of_ms_then_back_off(tmp_path, data, monkeypatch, wait):
    """A small dataset is built in a fraction of a second: the waiting ranks look again within 50 ms (a 1 s
    first poll cost every first job ~1.5 s before its first step), then back off (shared FS: to 30 s)."""
    slept: list[float] = []
    ready = tmp_path / "signal"

    def sleep(seconds: float) -> None:  # rank 0 (or the node's first rank) is done after the 60th look
        slept.append(seconds)
        if len(slept) == 60:
            ready.write_text(str(tmp_path))

    monkeypatch.setattr(data.cache.time, "sleep", sleep)
    if wait == "marker":
        monkeypatch.setattr(data.cache.rundir_publish, "is_sealed", lambda entry: ready.exists())
        data.cache.wait_for_marker(tmp_path / "entry", 3600, data.cache.FIRST_POLL_S)
        ceiling = 30.0
    else:
        assert data.cache.wait_for_node(ready, 3600) == tmp_path
        ceiling = 0.5
    assert len(slept) == 60 and slept[0] <= 0.05 and sum(slept[:5]) < 0.25
    assert slept == sorted(slept) and max(slept) == ceiling
