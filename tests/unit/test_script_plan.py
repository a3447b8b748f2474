"""Rendered scripts (golden files), sbatch quoting, and the plan as a value."""

import os
import shlex
import subprocess
from datetime import datetime
from pathlib import PurePath

import pytest

from hpcft.launchers.base import LaunchContext, build_launch
from hpcft.plan.plan import make_plan, resolve_backend
from hpcft.slurm.env import ClusterEnv
from hpcft.slurm.script import filename_pattern, sbatch_quote
from hpcft.spec import build_spec
from tests.conftest import check_golden

NOW = datetime(2026, 1, 2, 3, 4, 5)
PY = "/opt/venv/bin/python"
HOSTILE = "we ird $(touch x) `id` ; 'q' \"dq\" #c %x"


def spec_of(**sections):
    base = {
        "train": {"model": "/m", "data": {"train": "/d.jsonl"}},
        "run": {"runs_dir": "/shared/runs"},
        "launch": {"backend": "sbatch"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return build_spec(base)


CASES = {
    "two_nodes.sbatch": dict(resources={"nodes": 2, "gpus_per_node": 2, "time": "00:30:00"}),
    "all_resources.sbatch": dict(
        resources={
            "nodes": 4,
            "gpus_per_node": 8,
            "cpus_per_task": 64,
            "time": "1-00:00:00",
            "partition": "gpu",
            "account": "proj",
            "qos": "high",
            "constraint": "a100",
            "mem": "500G",
            "exclusive": True,
            "extra_sbatch": ["--reservation=res1"],
        },
        launch={"setup": ["module load cuda/12.4", "source /opt/env.sh"]},
    ),
    "hostile_names.sbatch": dict(run={"name": HOSTILE, "runs_dir": f"/shared/{HOSTILE}"}, resources={"nodes": 2}),
    "container_apptainer.sbatch": dict(
        resources={"nodes": 2, "gpus_per_node": 8},
        launch={
            "container": {
                "runtime": "apptainer",
                "image": "/images/train 1.sif",
                "mounts": ["/data", "/scratch:/mnt/scratch"],
            }
        },
    ),
    "container_pyxis.sbatch": dict(
        resources={"nodes": 2, "gpus_per_node": 8},
        launch={
            "launcher": "srun",
            "container": {
                "runtime": "pyxis",
                "image": "nvcr.io#nvidia/pytorch:24.05-py3",
                "mounts": ["/data:/data:ro"],
            },
        },
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_scripts_match_golden(request, name):
    plan = make_plan(spec_of(**CASES[name]), python=PY, now=NOW)
    check_golden(request, name, plan.files["job.sbatch"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_scripts_are_valid_bash(name):
    plan = make_plan(spec_of(**CASES[name]), python=PY, now=NOW)
    subprocess.run(["bash", "-n"], input=plan.files["job.sbatch"], text=True, check=True)


def test_node_launch_command_golden(request):
    spec = spec_of(resources={"nodes": 2, "gpus_per_node": 2})
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NODEID": "1", "SLURM_GPUS_ON_NODE": "2"}
    cmd = build_launch(LaunchContext(spec, ClusterEnv.from_mapping(env), "/shared/runs/r", PY, "10.0.0.1"))
    text = shlex.join(cmd.argv) + "\n" + "".join(f"{k}={v}\n" for k, v in sorted(cmd.env.items()))
    check_golden(request, "torchrun_node1.txt", text)


def test_hostile_run_dir_is_quoted_for_bash_and_sbatch():
    plan = make_plan(spec_of(**CASES["hostile_names.sbatch"]), python=PY, now=NOW)
    script = plan.files["job.sbatch"]
    assert f"RUN_DIR={shlex.quote(plan.run_dir)}" in script
    assert f"#SBATCH --chdir={sbatch_quote(plan.run_dir)}" in script


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain-1.x", "plain-1.x"),
        ("a b", '"a b"'),
        ('a"b', '"a\\"b"'),
        ("a#b", '"a\\#b"'),
        ("$(x)`y`;'z'", "$(x)`y`;'z'"),
    ],
)
def test_sbatch_quote(value, quoted):
    assert sbatch_quote(value) == quoted


def test_filename_pattern_doubles_percent():
    assert filename_pattern("/r/50%x") == "/r/50%%x"


def test_plan_is_offline_and_complete():
    plan = make_plan(spec_of(resources={"nodes": 2, "gpus_per_node": 2, "cpus_per_task": 8}), python=PY, now=NOW)
    assert plan.run_dir == "/shared/runs/job-20260102-030405"
    assert plan.submit_argv == ("sbatch", "--parsable", "/shared/runs/job-20260102-030405/job.sbatch")
    assert set(plan.files) == {"spec.yaml", "job.sbatch"}
    assert plan.rendezvous["world size"] == "4"
    assert plan.spec.launch.python == PY  # resolved into the spec the nodes read


def test_ranks_sharing_the_default_cpus_are_pointed_out():
    # Issue #25 item 12: without resources.cpus_per_task a job gets the partition's default CPUs (often 1).
    def notes(**resources):
        return make_plan(spec_of(resources={"nodes": 2, **resources}), python=PY, now=NOW).files.get("NOTES.txt", "")

    assert "resources.cpus_per_task is not set" in notes(gpus_per_node=4)
    assert "the node's 4 ranks" in notes(gpus_per_node=4) and "cpus_per_task: 16" in notes(gpus_per_node=4)
    assert "cpus_per_task" not in notes(gpus_per_node=4, cpus_per_task=2)  # asked: the user's choice
    assert "cpus_per_task" not in notes(gpus_per_node=1)  # one rank per node has its CPUs to itself


def test_auto_backend_follows_sbatch_availability():
    spec = spec_of(launch={"backend": "auto"})
    assert resolve_backend(spec, True).launch.backend == "sbatch"
    assert resolve_backend(spec, False).launch.backend == "local"


def test_local_plan_runs_torchrun_standalone():
    plan = make_plan(spec_of(launch={"backend": "local"}, resources={"gpus_per_node": 2}), python=PY, now=NOW)
    assert "job.sbatch" not in plan.files
    assert "--standalone" in plan.node_preview.argv and "--nproc-per-node=2" in plan.node_preview.argv


def test_user_script_replaces_the_trainer():
    spec = spec_of(launch={"command": ["/home/u/train.py", "--lr", "1e-4"]})
    plan = make_plan(spec, python=PY, now=NOW)
    assert plan.node_preview.argv[-3:] == ("/home/u/train.py", "--lr", "1e-4")
    assert "hpcft.train.main" not in plan.node_preview.argv


def test_the_warning_lead_fits_inside_the_time_limit(tmp_path):
    # --time 1 (one minute) with the default lead of 180 s would warn the job as it starts
    from hpcft.errors import ConfigError

    base = {"launch": {"backend": "sbatch", "command": [str(tmp_path / "t.py")]}, "resources": {"time": "1"}}
    (tmp_path / "t.py").write_text("")
    plan = make_plan(build_spec(base), python="python3", now=datetime(2026, 1, 2, 3, 4, 5))
    assert "#SBATCH --signal=B:USR1@30" in plan.files["job.sbatch"]
    with pytest.raises(ConfigError, match=r"run\.signal_lead: a 180 s warning for a time limit of 1"):
        build_spec({**base, "run": {"signal_lead": 180}})


def test_chain_jobs_are_not_requeueable_and_named_by_their_run():
    plan = make_plan(spec_of(run={"restart": "chain"}, resources={"nodes": 2}), python=PY, now=NOW)
    script = plan.files["job.sbatch"]
    assert "#SBATCH --no-requeue" in script and "#SBATCH --requeue" not in script
    assert f"#SBATCH --job-name={PurePath(plan.run_dir).name}" in script  # singleton goes by the job name


def test_after_job_outlives_a_warning_that_comes_while_it_decides(tmp_path):
    # The batch script's own last lines, run by bash: the launcher ends, then a warning (USR1) reaches the
    # process that after-job now is (issue #25, item 8). A stand-in after-job signals itself and carries on.
    plan = make_plan(spec_of(resources={"nodes": 2, "gpus_per_node": 2}), python=PY, now=NOW)
    tail = plan.files["job.sbatch"].split('echo "hpcft: launcher exited with ${rc}"')[1]
    after = tmp_path / "after-job"
    after.write_text("#!/usr/bin/env python3\nimport os, signal, sys\nos.kill(os.getpid(), signal.SIGUSR1)\n"
                     "print('decided', sys.argv[-1])\n")  # fmt: skip
    after.chmod(0o755)
    command = tail.split("exec ", 1)[1].split('"${rc}"')[0]  # the rendered after-job command
    script = "trap 'touch PREEMPT' USR1\nrc=0\n" + tail.replace(command, f"{after} ")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "decided 0", (proc.returncode, proc.stdout, proc.stderr)


def test_the_steps_get_the_cpus_per_task_the_allocation_has(tmp_path):
    # SLURM >= 22.05: srun does not inherit --cpus-per-task (issue #25 item 12); the script hands it on.
    text = make_plan(spec_of(resources={"nodes": 2, "cpus_per_task": 4}), python=PY, now=NOW).files["job.sbatch"]
    assert "#SBATCH --cpus-per-task=4" in text
    (line,) = [x for x in text.splitlines() if "SRUN_CPUS_PER_TASK" in x and not x.startswith("#")]
    probe = f'{line}\necho "srun gets ${{SRUN_CPUS_PER_TASK:-none}}"'
    for allocated, want in (({"SLURM_CPUS_PER_TASK": "4"}, "srun gets 4"), ({}, "srun gets none")):
        env = {k: v for k, v in os.environ.items() if not k.endswith("CPUS_PER_TASK")} | allocated
        out = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
        assert out.strip() == want
