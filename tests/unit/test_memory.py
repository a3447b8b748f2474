"""Memory planner (hpcft/memory.py) against figures computed by hand below, independently of the code.

The parameter counts are also the published ones: Llama-2-7B has 6,738,415,616 parameters,
Mixtral-8x7B 46,702,792,704, Qwen2-0.5B 494,032,768.
"""

from __future__ import annotations

import pytest

from hpcft.errors import ConfigError
from hpcft.plan import memory

GiB = 1024**3

LLAMA2_7B = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "tie_word_embeddings": False,
}
MIXTRAL_8X7B = {
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "tie_word_embeddings": False,
}
QWEN2_05B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def test_llama2_7b_parameters_by_hand():
    embed = 32000 * 4096  # 131,072,000; lm_head is the same size (untied)
    attention = 4 * 4096 * 4096  # q, k, v, o: 32 heads of 128, no GQA
    mlp = 3 * 4096 * 11008  # gate, up, down
    layer = attention + mlp + 2 * 4096  # + input and post-attention RMSNorm
    total = 2 * embed + 32 * layer + 4096  # + final norm
    assert total == 6_738_415_616
    count = memory.count_parameters(LLAMA2_7B)
    assert count.total == total
    assert count.largest_layer == embed  # the embedding beats one MLP projection (45,088,768)
    assert count.lm_head == embed


def test_mixtral_8x7b_parameters_by_hand():
    embed = 32000 * 4096
    attention = 4096 * 4096 + 2 * 4096 * (8 * 128) + 4096 * 4096  # q, k and v with 8 kv heads (GQA), o
    experts = 8 * 3 * 4096 * 14336  # 1,409,286,144: one module in transformers 5 (gate_up_proj + down_proj)
    router = 8 * 4096
    layer = attention + experts + router + 2 * 4096
    total = 2 * embed + 32 * layer + 4096
    assert total == 46_702_792_704
    count = memory.count_parameters(MIXTRAL_8X7B)
    assert count.total == total
    assert count.largest_layer == experts


def test_qwen2_tied_embeddings_and_qkv_bias():
    embed = 151936 * 896
    q, kv = 896, 2 * 64  # 14 heads of 64; 2 kv heads
    attention = 896 * q + 2 * 896 * kv + q * 896 + (q + 2 * kv)  # + q/k/v biases (Qwen2)
    layer = attention + 3 * 896 * 4864 + 2 * 896
    total = embed + 24 * layer + 896  # lm_head tied: counted once
    assert total == 494_032_768
    count = memory.count_parameters(QWEN2_05B)
    assert count.total == total and count.lm_head == 0


def test_llama2_7b_on_two_nodes_of_eight_80g_gpus():
    p, largest = 6_738_415_616, 131_072_000
    est = {(e.stage, e.offload): e for e in memory.estimate(memory.count_parameters(LLAMA2_7B), 2, 8)}
    world = 16
    assert est[0, None].gpu == 16 * p  # fp32 weights + grads + Adam m, v
    assert est[1, None].gpu == 4 * p + 16 * p // world  # 16-bit params + grads; fp32 states partitioned
    assert est[2, None].gpu == 2 * p + 18 * p // world == 21_057_548_800  # DeepSpeed: 2 + 18/N
    assert est[2, None].cpu == int(p * 4 * 8 * 1.5)
    assert est[3, None].gpu == 4 * largest + 18 * p // world == 8_105_005_568
    assert est[3, None].cpu == largest * 4 * 8 * 1.5 == 6_291_456_000
    assert est[3, "cpu"].gpu == 4 * largest and est[3, "cpu"].cpu == int(p * 18 / 2 * 1.5)
    assert est[3, "nvme"].nvme == 7 * p and est[3, "nvme"].cpu == 3 * p
    # 80 GiB GPUs, 80 % usable = 64 GiB: ZeRO-0 (100.4 GiB) does not fit, ZeRO-1 (5p = 31.4 GiB) does.
    choice = memory.choose(list(est.values()), 80 * GiB, memory.parse_mem("1000G"))
    assert (choice.estimate.stage, choice.estimate.offload) == (1, None)
    assert "ZeRO-0 (DDP) needs 100.4 GiB/GPU > 64.0 GiB usable" in choice.reason


def test_mixtral_auto_goes_to_cpu_offload_then_nvme_as_node_memory_shrinks():
    p = 46_702_792_704
    est = memory.estimate(memory.count_parameters(MIXTRAL_8X7B), 1, 8)
    # ZeRO-3 alone: 4 * 1,409,286,144 + 18p/8 = 110,718,428,160 B = 103.1 GiB > 64 GiB per GPU.
    assert est[3].gpu == 110_718_428_160
    # ZeRO-3 + CPU offload: GPU keeps the largest layer (5.25 GiB); CPU 18p * 1.5 = 1174.4 GiB per node.
    assert est[4].cpu == 27 * p
    big = memory.choose(est, 80 * GiB, memory.parse_mem("2000G"))  # 1800 GiB usable
    assert (big.estimate.stage, big.estimate.offload) == (3, "cpu")
    # 1000 GiB nodes (900 usable) are too small for CPU offload; NVMe leaves 4p * 1.5 = 261 GiB on the CPU.
    small = memory.choose(est, 80 * GiB, memory.parse_mem("1000G"))
    assert (small.estimate.stage, small.estimate.offload) == (3, "nvme")
    assert small.estimate.nvme == 14 * p


def test_auto_needs_gpu_memory_and_says_when_nothing_fits():
    est = memory.estimate(memory.count_parameters(MIXTRAL_8X7B), 1, 1)
    with pytest.raises(ConfigError, match="--gpu-mem"):
        memory.choose(est, None, None)
    with pytest.raises(ConfigError, match="no choice fits"):
        memory.choose(est, 4 * GiB, 64 * GiB)


def test_unknown_node_memory_is_not_a_failure_but_is_said():
    est = memory.estimate(memory.count_parameters(MIXTRAL_8X7B), 1, 8)
    verdict = memory.judge(est[4], 80 * GiB, None)
    assert verdict.fits and "not checked" in verdict.why


def test_parse_mem_uses_sbatch_units():
    assert memory.parse_mem("64G") == 64 * GiB
    assert memory.parse_mem("500000") == 500000 * 1024**2  # sbatch's default unit is MB
    assert memory.parse_mem("2T") == 2 * 1024**4
    assert memory.parse_mem(None) is None


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"model_type 'gpt2'.*pass --zero N"):
        memory.count_parameters({"model_type": "gpt2", "n_embd": 768})
    with pytest.raises(ConfigError, match="hidden_size: expected a positive integer"):
        memory.count_parameters({"model_type": "llama", "vocab_size": 10})
