"""hpcft config: accelerate YAML from flags (golden, loaded back by accelerate) and the interactive walk."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

import pytest
import yaml

from hpcft.tools import accel_config
from tests.conftest import check_golden, hpcft

CASES = {
    "multi_gpu": ["--distributed-type", "MULTI_GPU", "--num-machines", "2", "--num-processes", "16",
                  "--mixed-precision", "bf16", "--rdzv-backend", "c10d"],
    "deepspeed": ["--distributed-type", "DEEPSPEED", "--num-machines", "2", "--zero-stage", "3",
                  "--offload-optimizer-device", "nvme", "--offload-optimizer-nvme-path", "/local/nvme",
                  "--offload-param-device", "cpu", "--gradient-accumulation-steps", "4", "--gradient-clipping",
                  "0.5", "--deepspeed-multinode-launcher", "pdsh", "--mixed-precision", "bf16"],
    "fsdp": ["--distributed-type", "FSDP", "--fsdp-sharding-strategy", "HYBRID_SHARD", "--fsdp-offload-params",
             "yes", "--fsdp-auto-wrap-policy", "TRANSFORMER_BASED_WRAP", "--fsdp-transformer-layer-cls-to-wrap",
             "LlamaDecoderLayer", "--fsdp-state-dict-type", "FULL_STATE_DICT", "--dynamo", "yes",
             "--dynamo-mode", "max-autotune"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_from_flags_matches_golden_and_loads_in_accelerate(request, tmp_path, name):
    out = tmp_path / f"{name}.yaml"
    hpcft("config", "--out", str(out), "--non-interactive", *CASES[name])
    text = out.read_text()
    check_golden(request, f"accelerate_{name}.yaml", text.split("\n", 1)[1])  # minus the header with the path
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(out))  # accelerate's own reader: unknown keys would raise here
    assert str(loaded.distributed_type).endswith(yaml.safe_load(text)["distributed_type"])


def test_only_applicable_questions_are_asked():
    asked = []

    def prompt(q):
        asked.append(q.key)
        return {"distributed_type": "DEEPSPEED", "zero_stage": "3", "offload_param_device": "nvme"}.get(
            q.key, q.default
        )

    answers = accel_config.ask({"num_machines": 1}, prompt)
    assert "zero_stage" in asked and "offload_param_nvme_path" in asked and "zero3_init_flag" in asked
    assert not [k for k in asked if k.startswith("fsdp_") or k in ("machine_rank", "main_process_ip", "num_machines")]
    assert accel_config.to_config(answers)["deepspeed_config"]["offload_param_nvme_path"] == "/local_nvme"


def test_bad_replies_are_asked_again():
    replies = iter(["maybe", "yes"])
    errors = []
    q = accel_config.BY_KEY["dynamo"]
    given = {k.key: k.default for k in accel_config.QUESTIONS if k.key != "dynamo"}
    answers = accel_config.ask(given, lambda q_: next(replies) if q_.key == "dynamo" else q_.default, errors.append)
    assert answers["dynamo"] is True and errors == [f"{q.key}: expected yes or no, got 'maybe'"]


def test_interactive_walkthrough_at_a_real_terminal(tmp_path):
    """hpcft config in a pseudo-terminal: read each prompt, answer it, check the file."""
    out = tmp_path / "acc.yaml"
    replies = {"Which kind of distributed training?": "FSDP", "How many machines": "2", "rank of this machine": "",
               "IP address": "", "port": "", "same local network": "", "rendezvous backend": "c10d",
               "CPU only": "no", "torch dynamo": "no", "FSDP version": "2", "sharding strategy": "FULL_SHARD",
               "Offload parameters": "yes", "auto-wrap policy": "", "Layer class names": "LlamaDecoderLayer",
               "state-dict type": "", "How many processes": "8", "GPU ids": "", "Mixed precision": "bf16"}  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "hpcft", "config", "--out", str(out)])
    seen, buffer, end = [], "", time.time() + 60
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096).decode(errors="replace")
        except OSError:
            break
        buffer += chunk
        for key, reply in replies.items():
            if key in buffer and buffer.rstrip().endswith(":"):
                seen.append(key)
                os.write(fd, (reply + "\n").encode())
                buffer = ""
                break
    os.waitpid(pid, 0)
    config = yaml.safe_load(out.read_text())
    assert config["distributed_type"] == "FSDP" and config["rdzv_backend"] == "c10d"
    assert config["fsdp_config"]["fsdp_offload_params"] is True
    assert config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert config["mixed_precision"] == "bf16" and config["num_processes"] == 8
    assert "zero_stage" not in str(config) and seen[0] == "Which kind of distributed training?"
