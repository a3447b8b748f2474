"""The CLI stays light and explains bad input without tracebacks."""

import subprocess
import sys

import yaml

from tests.conftest import hpcft

HEAVY = ("torch", "transformers", "deepspeed", "datasets", "peft", "accelerate", "matplotlib")


def test_cli_imports_no_heavy_library():
    # Import every module the CLI path uses, then check none of the heavy ones came along.
    code = (
        "import sys, hpcft.cli, hpcft.plan.pipeline, hpcft.plan.resume, hpcft.ops.status, hpcft.backends.sbatch, "
        "hpcft.backends.local, hpcft.backends.actions, hpcft.node.agent, hpcft.node.after_job, hpcft.ops.logs, "
        "hpcft.spec.layering, hpcft.plan.memory, hpcft.ops.plot, hpcft.tools.doctor, hpcft.tools.accel_config, "
        "hpcft.launchers.torchrun, hpcft.launchers.deepspeed, hpcft.launchers.accelerate, hpcft.launchers.srun\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_help_lists_the_commands():
    out = hpcft("--help").stdout
    for command in ("submit", "plan", "status", "logs", "cancel", "list", "init-demo"):
        assert command in out


def test_bad_config_is_one_clear_error_without_traceback(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"resources": {"nodez": 2}, "train": {"lr": "x"}}))
    proc = hpcft("plan", str(job), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "resources.nodez: unknown key (did you mean resources.nodes?)" in proc.stderr
    assert "train.lr: expected float" in proc.stderr
    assert "train.model: required" not in proc.stderr  # cross-field checks wait for field errors


def test_missing_model_dir_is_reported_at_plan_time(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"train": {"model": "nomodel", "data": {"train": "nodata.jsonl"}}}))
    proc = hpcft("plan", str(job), "--backend", "sbatch", check=False)
    assert proc.returncode == 1
    assert f"train.model: {tmp_path / 'nomodel'} is not a model directory" in proc.stderr
    assert "train.data.train: file not found" in proc.stderr


def test_plan_prints_script_launch_and_rendezvous(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"train": {"model": "m", "data": {"train": "d.jsonl"}}}))
    out = hpcft(
        "plan",
        str(job),
        "--nodes",
        "2",
        "--gpus-per-node",
        "2",
        "--backend",
        "sbatch",
        "--runs-dir",
        str(tmp_path / "runs"),
    ).stdout
    assert "sbatch --parsable" in out
    assert "#SBATCH --nodes=2" in out
    assert "--rdzv-backend=c10d" in out
    assert "world size: 4" in out
    assert not (tmp_path / "runs").exists()  # plan writes nothing
