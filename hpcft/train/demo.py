"""``hpcft init-demo DIR``: a tiny Llama model, a locally trained tokenizer, data and a job file.

``build_demo(..., moe=True)`` builds a tiny Mixtral (mixture-of-experts) model instead.

No model hub is involved: the tokenizer is trained with the ``tokenizers`` library on the demo
corpus and the model is built from a ``LlamaConfig``. Both are saved with ``save_pretrained`` and
the trainer loads them through ``AutoTokenizer``/``AutoModelForCausalLM``, as it would a real model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from hpcft.errors import HpcftError

WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "silver",
    "window",
    "forest",
    "candle",
    "mirror",
    "harbor",
    "lantern",
    "meadow",
    "pepper",
    "rocket",
    "saddle",
    "thunder",
    "violet",
    "wagon",
    "yellow",
    "anchor",
    "basket",
    "cotton",
    "dragon",
    "falcon",
    "ginger",
    "hammer",
    "island",
    "jungle",
    "kettle",
    "lemon",
    "marble",
    "needle",
    "orange",
    "pillow",
    "quartz",
    "ribbon",
    "summer",
    "tiger",
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}"
    "{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

JOB_YAML = """\
# The demo job: a tiny {arch} model fine-tuned on a small instruction dataset.
#   hpcft submit {dir}/job.yaml --wait                 # this machine (local backend)
#   hpcft submit {dir}/job.yaml --nodes 2 --wait       # a SLURM cluster (2 processes per node)
run:
  name: demo
resources:
  nodes: 1
  gpus_per_node: 2        # processes per node on a machine without GPUs
  cpus_per_task: 4        # CPUs on each node for its ranks and their data loaders
  time: "00:30:00"
train:
  model: model            # paths are relative to this file
  data:
    train: data/train.jsonl
    eval: data/eval.jsonl
    format: alpaca
  max_steps: 20
  batch_size: 4
  seq_len: 128
  lr: 1.0e-3
  save_steps: 10
  eval_steps: 10
  logging_steps: 1
"""


def make_samples(n: int, seed: int) -> list[dict[str, str]]:
    """Alpaca-format samples of small word tasks whose answers follow from the input."""
    rng = random.Random(seed)
    tasks = [
        ("Reverse the word.", lambda w: w[::-1]),
        ("Write the word in capital letters.", str.upper),
        ("Count the letters of the word.", lambda w: str(len(w))),
        ("Give the first and last letter of the word.", lambda w: f"{w[0]} {w[-1]}"),
    ]
    out = []
    for _ in range(n):
        instruction, fn = rng.choice(tasks)
        word = rng.choice(WORDS)
        out.append({"instruction": instruction, "input": word, "output": fn(word)})
    return out


def train_tokenizer(corpus: list[str], directory: Path):
    """A byte-level BPE tokenizer trained on ``corpus``, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def build_model(tokenizer, directory: Path, hidden_size: int, moe: bool = False) -> int:
    """A randomly initialised Llama- (or, with ``moe``, Mixtral-) architecture model saved to ``directory``.

    Returns the number of parameters. The Mixtral variant has 4 experts, 2 per token, and computes
    the router load-balancing loss (``output_router_logits``).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    extra = {"num_local_experts": 4, "num_experts_per_tok": 2, "output_router_logits": True} if moe else {}
    config = (MixtralConfig if moe else LlamaConfig)(
        **extra,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4 if hidden_size >= 512 else hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = (MixtralForCausalLM if moe else LlamaForCausalLM)(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def build_demo(directory: Path, hidden_size: int = 128, moe: bool = False) -> Path:
    """Write model/, data/{train,eval}.jsonl and job.yaml under ``directory``; return the job file.

    Args:
        directory: where to write (must not hold a job.yaml yet).
        hidden_size: model width (512 gives ~8M parameters in the Llama variant).
        moe: build a tiny Mixtral (mixture-of-experts) model instead of a Llama one.
    """
    if (directory / "job.yaml").exists():
        raise HpcftError(f"{directory / 'job.yaml'} already exists", hint="pick a new directory or delete it")
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    train, evals = make_samples(400, seed=1), make_samples(40, seed=2)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evals)):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [f"{r['instruction']} {r['input']} {r['output']}" for r in train]
    corpus += ["### Instruction:\n### Input:\n### Response:\n<|user|>\n<|assistant|>\n<|system|>\n"] * 20
    model_dir = directory / "model"
    tokenizer = train_tokenizer(corpus, model_dir)
    build_model(tokenizer, model_dir, hidden_size, moe)
    job = directory / "job.yaml"
    job.write_text(JOB_YAML.format(dir=directory, arch="Mixtral (mixture-of-experts)" if moe else "Llama"))
    return job
