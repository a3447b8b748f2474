"""Swap buffers sized from the model and the host memory of ZeRO-3 offload (hpcft.plan.offload).

Expected numbers are worked out by hand below from the demo512 model's shapes (hidden 512, 4 heads of
128 with 2 KV heads, MLP 2048, 2 layers, vocabulary 422, untied lm_head) and DeepSpeed 0.19.8's rules
(a tensor is swapped when its per-rank partition holds >= 1 MiB; buffers hold the largest partition).
"""

from __future__ import annotations

import json

import pytest

from hpcft.errors import ConfigError
from hpcft.plan import offload
from hpcft.plan.memory import parameter_numels
from hpcft.plan.plan import make_plan
from hpcft.spec import build_spec

DEMO512 = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 422,
    "tie_word_embeddings": False,
}
# embedding 422*512; per layer q 512*512, k and v 512*256, o 512*512, 2 norms, gate/up/down 512*2048
LAYER = [262144, 131072, 131072, 262144, 512, 512, 1048576, 1048576, 1048576]
NUMELS = [216064, *LAYER, *LAYER, 512, 216064]


def test_parameter_numels_lists_every_tensor():
    assert parameter_numels(DEMO512) == NUMELS
    assert sum(NUMELS) == 8299008


def test_only_partitions_of_at_least_1_mib_are_swapped():
    # 4 ranks, fp32: an MLP weight's partition is 262144 * 4 B = 1 MiB exactly; q_proj's 65536 * 4 B is not
    assert offload.swapped(NUMELS, 4, "fp32") == [262144] * 6
    assert offload.swapped(NUMELS, 4, "bf16") == []  # 262144 * 2 B < 1 MiB
    assert offload.swapped(NUMELS, 2, "bf16") == [524288] * 6


def test_param_buffer_holds_the_largest_partition_aligned():
    assert offload.param_buffer_size(NUMELS, 4, "fp32") == 262144
    assert offload.param_buffer_size([1000], 3, "fp32") == 512  # ceil(1000/3) = 334 → 256-element steps
    assert offload.param_buffer_size([1000], 3, "bf16") == 512  # 334 → 512-element steps


def test_generated_nvme_config_is_sized_from_the_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(DEMO512))
    spec = build_spec({"train": {"model": str(tmp_path / "m"), "data": {"train": "d.jsonl"}, "zero": 3,
                                 "offload": {"device": "nvme", "nvme_path": "/l"}},
                       "resources": {"nodes": 2, "gpus_per_node": 2}, "launch": {"backend": "sbatch"}})  # fmt: skip
    plan = make_plan(spec, python="python3", now=_now())
    zero = json.loads(plan.files["ds_config.json"])["zero_optimization"]
    assert zero["offload_param"]["buffer_size"] == 262144 and zero["offload_param"]["buffer_count"] == 5
    assert zero["stage3_max_reuse_distance"] == 0 and zero["sub_group_size"] == 100_000_000


def test_a_users_buffer_too_small_for_the_largest_parameter_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(DEMO512))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": {
        "device": "nvme", "nvme_path": "/l", "buffer_size": 100000}}}))  # fmt: skip
    spec = build_spec({"train": {"model": str(tmp_path / "m"), "data": {"train": "d.jsonl"},
                                 "deepspeed_config": str(ds)}, "resources": {"nodes": 2, "gpus_per_node": 2},
                       "launch": {"backend": "sbatch"}})  # fmt: skip
    with pytest.raises(ConfigError) as err:
        make_plan(spec, python="python3", now=_now())
    assert "buffer_size 100000 elements cannot hold the largest parameter partition, 262144 elements" in str(err.value)


def test_host_memory_per_rank_by_part():
    zero = {"offload_optimizer": {"device": "nvme"}, "offload_param": {"device": "nvme", "buffer_size": 262144,
            "buffer_count": 5}, "sub_group_size": 100_000_000}  # fmt: skip
    parts = offload.host_per_rank(NUMELS, 4, "fp32", zero, cpu_compute=True).parts
    # p = per-rank share: 2 * 54016 (embedding, lm_head) + 128 (final norm) + 2 * 983296 (layers) = 2074752
    assert parts["optimizer swap buffers (locked)"] == 4 * 4 * 2074752
    assert parts["gradient partitions"] == 4 * 2074752
    assert parts["parameter swap buffers (locked)"] == 5 * 262144 * 4
    assert parts["parameter partitions kept in RAM (max_in_cpu)"] == 4 * 2074752
    assert parts["gathered parameters (CPU compute)"] == 4 * 8299008
    cpu = offload.host_per_rank(NUMELS, 4, "fp32", {"offload_optimizer": {"device": "cpu"}}, cpu_compute=False)
    assert cpu.parts["optimizer states (fp32 params, grads, Adam)"] == 16 * 2074752
    assert cpu.parts["loading the model (its full tensors, once)"] == 4 * 8299008
    assert cpu.total == offload.PROCESS_BASE + 4 * 8299008 + 16 * 2074752 + 4 * 2074752


def test_the_old_default_buffers_are_what_killed_the_ranks():
    # DeepSpeed's default buffer_size 1e8 at the 16 buffers the old CPU workaround set: 6.4 GB per fp32 rank
    zero = {"offload_param": {"device": "nvme", "buffer_count": 16}}
    parts = offload.host_per_rank(NUMELS, 4, "fp32", zero, cpu_compute=False).parts
    assert parts["parameter swap buffers (locked)"] == 16 * 100000000 * 4


def _now():
    from datetime import datetime

    return datetime(2026, 1, 2, 3, 4, 5)
