"""TRL's real SFT trainer on the 2-node lab, unedited: hpcft's progress, preemption safety and resume.

``trl`` is installed in the test environment (constraints/verified.txt). Its trainer is a
``transformers.Trainer``: hpcft's integration (``hpcft.train.hf_integration``) makes it write
``metrics.jsonl``, save at the step SLURM's preemption reaches it, and continue from that checkpoint
when the job is requeued. The independent expectations: SLURM's own record of the preemption, the
checkpoint directories TRL wrote, and the step count the job was given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from hpcft.train import heartbeat
from tests.cluster.test_drills import stopped_rank_named
from tests.conftest import hpcft, release_requeued, wait_until

pytestmark = pytest.mark.cluster

STEPS = 150
# One rank per node throughout: the claims are about nodes and TRL's own entry points (a rank start of TRL with
# DeepSpeed costs ~10 CPU-s on the lab's 2 shared cores).


@pytest.fixture
def sft_data(demo_dir, tmp_path) -> Path:
    """The demo's alpaca samples as TRL prompt/completion rows (a directory ``load_dataset`` reads)."""
    out = tmp_path / "sft"
    out.mkdir()
    rows = [json.loads(x) for x in (demo_dir / "data" / "train.jsonl").read_text().splitlines()]
    with open(out / "train.jsonl", "w") as f:
        for r in rows:
            prompt = r["instruction"] + (f" {r['input']}" if r.get("input") else "")
            f.write(json.dumps({"prompt": prompt, "completion": " " + r["output"]}) + "\n")
    return out


def sft_args(demo_dir: Path, data: Path) -> list[str]:
    return ["--model_name_or_path", str(demo_dir / "model"), "--dataset_name", str(data), "--output_dir",
            "{output_dir}", "--max_steps", str(STEPS), "--save_steps", "100000", "--logging_steps", "1",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "--seed", "1"]  # fmt: skip


def state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # the last one may be half-written
    return [json.loads(x) for x in lines if x]


def test_trl_sft_under_torchrun_is_preempted_resumes_and_finishes(lab, demo_dir, runs_dir, sft_data):
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--gpus-per-node", "1", "--partition", "low",
                "--runs-dir", str(runs_dir), "--", "-m", "trl.scripts.sft",
                *sft_args(demo_dir, sft_data)).stdout  # fmt: skip
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    wait_until("TRL's step 30", lambda: any(r.get("step", 0) >= 30 and "loss" in r for r in records(run)), timeout=300)
    st = json.loads(hpcft("status", str(run), "--json").stdout)
    assert st["step"] >= 30 and st["total_steps"] == STEPS and st["loss"] is not None  # status follows TRL

    def beating() -> dict | None:  # TRL's Trainer publishes heartbeats and its compute time (hf_integration)
        speeds = json.loads(hpcft("status", str(run), "--json").stdout)["node_speeds"]
        return speeds if sorted(speeds) == list(lab.nodes) and all(v["compute_seconds"] > 0 for v in speeds.values()) \
            else None  # fmt: skip

    assert all(v["step"] > 0 for v in wait_until("both nodes' speeds", beating, timeout=60, interval=2).values())
    preemptor = subprocess.run(["sbatch", "--parsable", "-p", "high", "-N", "2", "--gres=gpu:2", "--mem=1G",
                                "-o", "/dev/null", "--wrap", "sleep 2"], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    try:
        event = wait_until("the preemption", lambda: next(
            (e for e in state(run).get("events", []) if e.get("kind") == "preemption"), None), timeout=120)  # fmt: skip
        assert event["action"] == "requeue"
        reached = max(r["step"] for r in records(run) if "loss" in r)
        assert (run / "checkpoints" / f"checkpoint-{reached}" / "trainer_state.json").is_file()  # TRL saved it
        # ... and stopped there: sft.py's final save_model (and push_to_hub) runs only when training is over.
        assert not (run / "checkpoints" / "model.safetensors").exists()
        assert "saved step" in hpcft("logs", str(run)).stdout
        release_requeued(job)
        wait_until("COMPLETED", lambda: json.loads(hpcft("status", str(run), "--json").stdout)["state"] == "COMPLETED",
                   timeout=600, interval=2)  # fmt: skip
    finally:
        subprocess.run(["scancel", preemptor], check=False)
    begins = [r for r in records(run) if r.get("event") == "train_begin"]
    assert [b["start_step"] for b in begins] == [0, reached]  # resumed at the very step, no step lost
    assert max(r["step"] for r in records(run) if "loss" in r) == STEPS
    assert (run / "checkpoints" / "model.safetensors").is_file()  # TRL's final save_model into {output_dir}
    assert json.loads(hpcft("status", str(run), "--json").stdout)["checkpoint"] == f"checkpoint-{STEPS}"
    final = state(run)
    assert final.get("failures", 0) == 0 and final["preemptions"] == 1


def test_a_stopped_rank_under_trl_is_found_named_and_restarted(lab, demo_dir, runs_dir, sft_data):
    """node2's rank of TRL's own SFT script stopped (SIGSTOP): the watchdog finds it from the heartbeats
    hpcft's integration publishes inside TRL's Trainer, py-spy names it, every rank restarts in the job and
    TRL resumes from its newest checkpoint. (The default timeout is drilled with the demo, test_drills.py::
    test_f; here 30 s.)"""
    steps = 120
    out = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--gpus-per-node", "1",
                "-o", "run.hang_timeout=30", "--runs-dir", str(runs_dir), "--", "-m", "trl.scripts.sft",
                *sft_args(demo_dir, sft_data), "--save_steps", "20", "--max_steps", str(steps)).stdout  # fmt: skip
    job = out.split(" as job ")[1].split()[0]
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    trained = lambda: max((r["step"] for r in records(run) if "loss" in r), default=0)  # noqa: E731
    wait_until("TRL's step 30", lambda: trained() >= 30, timeout=300, interval=0.1)
    beats = Path(f"/dev/shm/hpcft-{job}") / lab.nodes[1]  # the job's heartbeats on node2 (the machine's /dev/shm)
    (beat,) = [b for b in heartbeat.read_node(beats) if b.rank == 1]
    os.kill(beat.pid, signal.SIGSTOP)  # rank 1: the one on node2
    stopped_at = trained()
    event = stopped_rank_named(run, timeout=180)
    assert [(s["node"], s["rank"]) for s in event["suspects"]] == [(lab.nodes[1], 1)], event
    assert event["allowed"] == 30
    stacks = (run / event["stacks"] / f"{lab.nodes[1]}.stacks.txt").read_text()
    assert "(trl/" in stacks and "transformers/trainer.py" in stacks, stacks  # the stopped rank's own stack
    wait_until("COMPLETED", lambda: json.loads(hpcft("status", str(run), "--json").stdout)["state"] == "COMPLETED",
               timeout=600, interval=2)  # fmt: skip
    final = state(run)
    assert final["failures"] == 1 and [j["id"] for j in final["jobs"]] == [job]  # charged, in the same job
    begins = [r for r in records(run) if r.get("event") == "train_begin"]
    assert len(begins) == 2 and stopped_at - 20 <= begins[1]["start_step"] <= stopped_at  # TRL resumed
    assert begins[1]["start_step"] % 20 == 0 and max(r["step"] for r in records(run) if "loss" in r) == steps


def test_trl_world_size_mismatch_stops_at_once(lab, demo_dir, runs_dir, sft_data):
    # --launcher none starts one `python -m trl.scripts.sft` per node: 2 single-process Trainers in a job of 2.
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--gpus-per-node", "1", "--launcher", "none",
                 "--wait", "--runs-dir", str(runs_dir), "--", "-m", "trl.scripts.sft", *sft_args(demo_dir, sft_data),
                 check=False)  # fmt: skip
    assert proc.returncode != 0
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    output = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("slurm-*.out"))
    assert "this Trainer sees a world of 1 process(es), but the job runs 2" in output
    assert not [r for r in records(run) if "loss" in r]  # stopped before training a step
    assert state(run)["events"][-1]["action"] == "fail"  # FATAL: neither restarted nor requeued


def console_sft(
    demo_dir: Path, runs_dir: Path, sft_data: Path, *flags: str
) -> tuple[subprocess.CompletedProcess, Path]:
    """`trl sft` runs `accelerate launch` itself: once per node (--launcher none), with this node's config."""
    args = [a if a != str(STEPS) else "20" for a in sft_args(demo_dir, sft_data)]
    args[args.index("--save_steps") + 1] = "10"
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--gpus-per-node", "1", "--launcher", "none",
                 "--wait", "--runs-dir", str(runs_dir), *flags, "--", "trl", "sft", "--accelerate_config",
                 "{accelerate_config}", *args, check=False)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    return proc, run


def test_trl_sft_console_command_runs_its_own_accelerate_once_per_node(lab, demo_dir, runs_dir, sft_data):
    proc, run = console_sft(demo_dir, runs_dir, sft_data)
    output = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("slurm-*.out"))
    assert proc.returncode == 0, output[-4000:]
    begin = next(r for r in records(run) if r.get("event") == "train_begin")
    assert begin["world_size"] == 2  # one world across both nodes, not two separate ones of 1
    assert max(r["step"] for r in records(run) if "loss" in r) == 20
    config = yaml.safe_load((run / "accelerate-node1.yaml").read_text())
    assert (config["machine_rank"], config["num_machines"], config["num_processes"]) == (1, 2, 2)
    assert json.loads(hpcft("status", str(run), "--json").stdout)["step"] == 20


@pytest.mark.parametrize("zero", ["3"])
def test_trl_sft_console_command_with_accelerate_and_deepspeed(lab, demo_dir, runs_dir, sft_data, zero):
    # accelerate's own DeepSpeed path (the per-node config names ds_config.json) across both nodes.
    proc, run = console_sft(demo_dir, runs_dir, sft_data, "--zero", zero)
    output = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("slurm-*.out"))
    assert proc.returncode == 0, output[-4000:]
    assert next(r for r in records(run) if r.get("event") == "train_begin")["world_size"] == 2
    assert max(r["step"] for r in records(run) if "loss" in r) == 20
    assert (run / "checkpoints" / "checkpoint-10" / "global_step10").is_dir()  # DeepSpeed's engine saved it
    config = yaml.safe_load((run / "accelerate-node0.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert json.loads((run / "ds_config.json").read_text())["zero_optimization"]["stage"] == int(zero)


def test_ds_config_reaches_trls_trainer_as_deepspeed_zero3(lab, demo_dir, runs_dir, sft_data):
    # The Trainer's own --deepspeed (not accelerate's config): hpcft's integration starts DeepSpeed's
    # process group over gloo first on CPU nodes, as hpcft's trainer does; ZeRO-3 then partitions the model.
    args = [a if a != str(STEPS) else "20" for a in sft_args(demo_dir, sft_data)]
    args[args.index("--save_steps") + 1] = "10"
    proc = hpcft("submit", str(demo_dir / "job.yaml"), "--nodes", "2", "--gpus-per-node", "1", "--zero", "3", "--wait",
                 "--runs-dir", str(runs_dir), "--", "-m", "trl.scripts.sft", "--deepspeed", "{ds_config}", *args,
                 check=False)  # fmt: skip
    (run,) = [p.parent for p in runs_dir.glob("*/spec.yaml")]
    output = "\n".join(p.read_text(errors="replace") for p in (run / "logs").glob("slurm-*.out"))
    assert proc.returncode == 0, output[-4000:]
    assert f"--deepspeed {run}/ds_config.json" in output  # what rank 0 ran, {ds_config} filled in
    assert max(r["step"] for r in records(run) if "loss" in r) == 20
    assert next(r for r in records(run) if r.get("event") == "train_begin")["world_size"] == 2
    shards = list((run / "checkpoints" / "checkpoint-10" / "global_step10").glob("*zero_pp_rank_*_model_states.pt"))
    assert len(shards) == 2  # ZeRO-3: one model-state shard per rank, written by DeepSpeed's engine
