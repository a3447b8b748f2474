"""DeepSpeed/accelerate config generation (hpcft.plan.deepspeed, launchers.accelerate), its rules, CPU adaptations.

Expected configs are written out by hand from DeepSpeed's documented keys, not derived from hpcft.plan.deepspeed.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import yaml

from hpcft.errors import ConfigError
from hpcft.launchers import accelerate
from hpcft.plan import deepspeed as zero
from hpcft.plan.plan import make_plan
from hpcft.spec import build_spec
from hpcft.train import cpu_workarounds
from hpcft.train.args import nvme_swap_bytes, recipe_arguments
from tests.conftest import check_golden, hpcft

NOW = datetime(2026, 1, 2, 3, 4, 5)
RUN = "/shared/runs/job-20260102-030405"


def spec_of(**train):
    base = {"model": "/m", "data": {"train": "/d.jsonl"}, "batch_size": 4, "grad_accum": 2}
    return build_spec({"run": {"runs_dir": "/shared/runs"}, "launch": {"backend": "local"}, "train": {**base, **train}})


def problems_of(**train) -> str:
    with pytest.raises(ConfigError) as err:
        spec_of(**train)
    return str(err.value)


# --- generated configs ---------------------------------------------------------------------------


def test_zero_0_is_plain_ddp_without_deepspeed():
    spec = spec_of()
    assert zero.deepspeed_config(spec) is None
    assert "ds_config.json" not in make_plan(spec, python="py", now=NOW).files


def test_zero_2_carries_the_spec_batch_clipping_and_precision():
    config = zero.deepspeed_config(spec_of(zero=2, precision="bf16", max_grad_norm=0.5))
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == "auto"  # world size: the Trainer's
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in config["zero_optimization"] and "optimizer" not in config


def test_zero_3_gathers_16bit_weights_on_save_unless_told_not_to():
    assert zero.deepspeed_config(spec_of(zero=3))["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    off = zero.deepspeed_config(spec_of(zero=3, gather_16bit_on_save=False))
    assert off["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is False


def test_offload_device_means_optimizer_and_under_zero_3_params():
    z3 = zero.deepspeed_config(spec_of(zero=3, offload={"device": "cpu"}))["zero_optimization"]
    assert z3["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z3["offload_param"] == {"device": "cpu", "pin_memory": True}
    z2 = zero.deepspeed_config(spec_of(zero=2, offload={"device": "cpu"}))
    assert z2["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in z2["zero_optimization"]
    assert z2["optimizer"]["type"] == "AdamW"  # DeepSpeedCPUAdam for offloaded states
    only_params = zero.deepspeed_config(spec_of(zero=3, offload={"param": "cpu"}))
    assert "offload_optimizer" not in only_params["zero_optimization"]


def test_nvme_swap_goes_to_a_folder_of_the_run(request):
    spec = spec_of(zero=3, offload={"device": "nvme", "nvme_path": "/local/nvme"})
    plan = make_plan(spec, python="py", now=NOW)
    config = json.loads(plan.files["ds_config.json"])
    z = config["zero_optimization"]
    assert z["offload_param"]["nvme_path"] == z["offload_optimizer"]["nvme_path"] == "/local/nvme/job-20260102-030405"
    check_golden(request, "ds_config_zero3_nvme.json", plan.files["ds_config.json"])


# --- spec rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"offload": {"device": "cpu"}}, "train.offload: offloading needs DeepSpeed ZeRO, got train.zero 0"),
        ({"zero": 2, "offload": {"param": "cpu"}}, "train.offload.param: parameter offload is ZeRO-3 only"),
        ({"zero": 1, "offload": {"device": "nvme", "nvme_path": "/x"}}, "NVMe offload is ZeRO-3 only"),
        ({"zero": 3, "offload": {"device": "nvme"}}, "train.offload.nvme_path: required with NVMe offload"),
        ({"zero": 3, "offload": {"device": "nvme", "nvme_path": "rel"}}, "must be an absolute node-local path"),
        ({"lora": {"load_in_4bit": True}}, "train.lora.load_in_4bit: QLoRA trains LoRA adapters"),
        ({"offload": {"device": "gpu"}}, "train.offload.device: expected one of none, cpu, nvme"),
    ],
)
def test_conflicts_are_config_errors_before_submission(train, message):
    assert message in problems_of(**train)


def test_allowed_combinations():
    spec_of(zero=1, offload={"optimizer": "cpu"})
    spec_of(zero=3, offload={"device": "nvme", "nvme_path": "$TMPDIR/nvme"})  # expands on the node
    spec_of(zero=3, offload={"optimizer": "nvme", "param": "cpu", "nvme_path": "/local"})
    spec_of(offload={"nvme_path": "/local"})  # a profile may set the path for every job


# --- the user's own DeepSpeed JSON ---------------------------------------------------------------


def user_json(tmp_path, data) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return str(path)


USER = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}


def test_user_json_is_used_as_given_and_shown_by_the_plan(tmp_path):
    spec = spec_of(deepspeed_config=user_json(tmp_path, USER), zero=3, offload={"param": "cpu"})
    files = make_plan(spec, python="py", now=NOW).files
    assert json.loads(files["ds_config.json"]) == USER


@pytest.mark.parametrize(
    ("train", "data", "message"),
    [
        ({"zero": 2}, USER, "train.zero: 2 contradicts train.deepspeed_config"),
        ({"offload": {"device": "nvme", "nvme_path": "/l"}}, USER, "train.offload: nvme contradicts"),
        ({"precision": "bf16"}, {**USER, "bf16": {"enabled": False}}, "train.precision: bf16 contradicts"),
        ({}, {**USER, "train_micro_batch_size_per_gpu": 8}, "train.batch_size: 4 contradicts"),
        ({}, {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}}, "needs an nvme_path"),
        (
            {},
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "/l"}}},
            "stage 3",
        ),
    ],
)
def test_user_json_contradictions_stop_the_plan(tmp_path, train, data, message):
    spec = spec_of(deepspeed_config=user_json(tmp_path, data), **train)
    with pytest.raises(ConfigError, match=None) as err:
        make_plan(spec, python="py", now=NOW)
    assert message in str(err.value)


def test_unreadable_user_json_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    for path, message in ((bad, "is not a readable JSON file"), (tmp_path / "none.json", "file not found")):
        with pytest.raises(ConfigError, match=message):
            make_plan(spec_of(deepspeed_config=str(path)), python="py", now=NOW)


def test_deepspeed_config_path_is_relative_to_the_job_file(tmp_path):
    user_json(tmp_path, USER)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"train": {"model": "m", "data": {"train": "d"}, "deepspeed_config": "ds.json"}}))
    from hpcft.spec.layering import load_job

    assert load_job(job).train.deepspeed_config == str(tmp_path / "ds.json")


# --- accelerate ----------------------------------------------------------------------------------


def test_accelerate_yaml_carries_stage_and_offload_through_ds_config(request):
    spec = spec_of(zero=3, offload={"optimizer": "cpu", "param": "nvme", "nvme_path": "/local"}, precision="bf16")
    text = accelerate.accelerate_config_text(spec, num_machines=2, num_processes=8)
    data = yaml.safe_load(text)
    assert data["distributed_type"] == "DEEPSPEED" and "mixed_precision" not in data  # both from the file
    assert data["deepspeed_config"] == {
        "deepspeed_config_file": "ds_config.json",  # accelerate runs in the run directory
        "zero3_init_flag": True,
        "deepspeed_multinode_launcher": "standard",
    }
    assert "# DeepSpeed ZeRO-3, offload optimizer cpu / param nvme, precision bf16" in text
    check_golden(request, "accelerate_zero3_offload.yaml", text)
    plain = accelerate.accelerate_config(spec_of(precision="bf16"), num_machines=1, num_processes=2)
    assert plain["distributed_type"] == "MULTI_GPU" and plain["mixed_precision"] == "bf16"


def test_accelerate_yaml_with_the_user_json(tmp_path):
    path = user_json(tmp_path, USER)
    text = accelerate.accelerate_config_text(spec_of(deepspeed_config=path), num_machines=1, num_processes=2)
    assert yaml.safe_load(text)["deepspeed_config"]["deepspeed_config_file"] == "ds_config.json"
    assert f"your config {path}, copied to ds_config.json" in text


# --- CLI -----------------------------------------------------------------------------------------


def test_plan_shows_the_generated_config_and_offload_flag(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "d.jsonl").write_text("{}\n")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"train": {"model": "m", "data": {"train": "d.jsonl"}}}))
    out = hpcft("plan", str(job), "--backend", "local", "--zero", "3", "--offload", "cpu").stdout
    assert "# --- ds_config.json ---" in out and '"device": "cpu"' in out
    bad = hpcft("plan", str(job), "--backend", "local", "--offload", "cpu", check=False)
    assert bad.returncode == 1 and "offloading needs DeepSpeed ZeRO" in bad.stderr
    qlora = hpcft(
        "plan", str(job), "--backend", "local", "-o", "train.lora.enabled=true", "-o", "train.lora.load_in_4bit=true"
    )
    assert "# --- NOTES.txt ---" in qlora.stdout and "needs CUDA GPUs and bitsandbytes" in qlora.stdout


# --- train-side mappings (pure) ------------------------------------------------------------------


def test_cpu_offload_uses_torch_adamw_without_the_deepspeed_check():
    config = zero.deepspeed_config(spec_of(zero=3, offload={"device": "cpu"}))
    out, changes = cpu_workarounds.adapt_ds_config(config, cuda=False, generated=True)
    assert "optimizer" not in out and out["zero_force_ds_cpu_optimizer"] is False and len(changes) == 2
    assert cpu_workarounds.adapt_ds_config(config, cuda=True, generated=True) == (config, [])
    user, _ = cpu_workarounds.adapt_ds_config(config, cuda=False, generated=False)
    assert user["optimizer"] == config["optimizer"] and "zero_force_ds_cpu_optimizer" not in user


def test_cpu_nvme_param_swap_gets_no_prefetch_and_keeps_the_planned_buffers():
    config = zero.deepspeed_config(spec_of(zero=3, offload={"device": "nvme", "nvme_path": "/l"}))
    out, _ = cpu_workarounds.adapt_ds_config(config, cuda=False, generated=True)
    assert out["zero_optimization"]["stage3_prefetch_bucket_size"] == 0
    assert out["zero_optimization"]["stage3_max_reuse_distance"] == 0
    assert out["zero_optimization"]["offload_param"]["buffer_count"] == 5  # not raised: 16 x 1e8 locked 6.4 GB
    assert config["zero_optimization"]["stage3_prefetch_bucket_size"] == "auto"  # the input is not modified
    user = {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/l"}}}
    out, _ = cpu_workarounds.adapt_ds_config(user, cuda=False, generated=False)
    assert out["zero_optimization"]["stage3_max_reuse_distance"] == 0  # a user's config without the key
    assert "buffer_count" not in out["zero_optimization"]["offload_param"]


def test_fp16_and_qlora_need_cuda():
    with pytest.raises(ConfigError) as err:
        cpu_workarounds.check_cuda_features(
            spec_of(precision="fp16", lora={"enabled": True, "load_in_4bit": True}).train, cuda=False
        )
    assert "train.precision: fp16 mixed precision is for CUDA GPUs" in str(
        err.value
    ) and "train.lora.load_in_4bit: QLoRA" in str(err.value)
    cpu_workarounds.check_cuda_features(spec_of(precision="bf16").train, cuda=False)


def test_recipe_arguments_map_the_spec():
    args = recipe_arguments(spec_of(precision="bf16", warmup_steps=0.1, lr_scheduler="cosine", log_level="debug"))
    assert args["bf16"] and not args["fp16"] and args["warmup_steps"] == 0.1 and args["lr_scheduler_type"] == "cosine"
    assert args["log_level"] == "debug" and args["log_level_replica"] == "warning"
    assert recipe_arguments(spec_of(warmup_steps=5))["warmup_steps"] == 5


def test_nvme_swap_size_counts_partitions_of_every_rank_on_the_node(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    config = zero.deepspeed_config(spec_of(zero=3, offload={"device": "nvme", "nvme_path": "/l"}))
    need = nvme_swap_bytes(config, [1_000_000, 3_000_000], "bf16")
    assert need == {"params": 1_000_000 * 2 * 2, "optimizer": 1_000_000 * 16 * 2, "largest_partition": 750_000}


def test_nvme_directory_checks_name_the_problem(tmp_path):
    from hpcft.train.args import _filesystem_type, _nvme_dir_problem

    assert "does not exist on" in _nvme_dir_problem(tmp_path / "no" / "such", 1)
    (tmp_path / "file").write_text("x")
    assert "does not exist on" in _nvme_dir_problem(tmp_path / "file", 1)
    assert "GiB free, the swap files need" in _nvme_dir_problem(tmp_path, 2**60)
    assert _nvme_dir_problem(tmp_path / "run-1", 1) is None and (tmp_path / "run-1").is_dir()  # the run's folder
    assert _filesystem_type(tmp_path) is not None
