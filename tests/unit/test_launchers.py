"""Every launcher's command (golden), hostfiles, MPI rank mapping, submitit parameters."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess

import pytest

from hpcft.backends.submitit import executor_parameters
from hpcft.errors import LaunchError
from hpcft.launchers.base import LAUNCHERS as REGISTRY
from hpcft.launchers.base import SHAPES, LaunchContext, build_launch, hostfile_text
from hpcft.launchers.deepspeed import deepspeed_env_text, pdsh_user_arg
from hpcft.node import rank_exec
from hpcft.node.agent import parse_ip_addr, subnet_of
from hpcft.plan.plan import make_plan
from hpcft.slurm.env import ClusterEnv, torch_rank_env
from hpcft.spec import LAUNCHERS, build_spec
from hpcft.spec.model import slurm_minutes
from tests.conftest import check_golden
from tests.unit.test_script_plan import NOW, PY

RUN = "/shared/runs/r"


def spec_for(launcher: str, **launch):
    if launcher == "none":  # starts the user's command itself: a self-launching tool
        launch = {"command": ["llamafactory-cli", "train", "cfg.yaml"], "hf_integration": False, **launch}
    return build_spec(
        {
            "train": {"model": "/m", "data": {"train": "/d.jsonl"}},
            "resources": {"nodes": 2, "gpus_per_node": 2},
            "launch": {"backend": "sbatch", "launcher": launcher, **launch},
        }
    )


def node_env(node: int, **extra) -> ClusterEnv:
    env = {
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NODEID": str(node),
        "SLURM_GPUS_ON_NODE": "2",
        "SLURM_PROCID": str(2 * node + 1),
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
        **extra,
    }
    return ClusterEnv.from_mapping(env)


def describe(launcher: str, restarts: int = 0, **launch) -> str:
    out = []
    for node in (0, 1):
        spec = spec_for(launcher, **launch)
        ctx = LaunchContext(spec, node_env(node), RUN, PY, "10.200.0.11", "10.200.0.0/24", restarts=restarts)
        cmd = build_launch(ctx)
        out.append(f"## node {node}\n{shlex.join(cmd.argv)}\n")
        out += [f"{k}={v}\n" for k, v in sorted(cmd.env.items())]
        for name, text in sorted(cmd.files.items()):
            out.append(f"### file {name}\n{text}")
    return "".join(out)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launch_commands_match_golden(request, launcher):
    check_golden(request, f"launch_{launcher}.txt", describe(launcher))


def test_torchrun_static_rendezvous_golden(request):
    check_golden(request, "launch_torchrun_static.txt", describe("torchrun", restarts=2, rdzv="static"))


@pytest.mark.parametrize("shape", ["head_node", "per_rank"])
def test_scripts_of_other_shapes_match_golden(request, shape):
    launcher = next(name for name, entry in REGISTRY.items() if entry.shape == shape)
    plan = make_plan(spec_for(launcher), python=PY, now=NOW)
    # The shared fixed time (2026-01-02 03:04:05) names the run directory, which keeps plan goldens stable.
    assert "/job-20260102-030405/job.sbatch\n" in plan.files["job.sbatch"]
    check_golden(request, f"{shape}.sbatch", plan.files["job.sbatch"])


def test_every_registered_launcher_is_complete():
    # One registry holds every fact of a launcher (the spec's choices are its names): each entry has
    # a known shape, a checkable need, and a module with a build function.
    import importlib

    assert tuple(REGISTRY) == LAUNCHERS
    for entry in REGISTRY.values():
        assert entry.shape in SHAPES
        assert entry.needs is None or entry.needs[0] in ("module", "program")
        assert callable(importlib.import_module(entry.module).build)


def test_srun_launcher_maps_slurm_tasks_to_ranks():
    ctx = LaunchContext(spec_for("srun"), node_env(1), RUN, PY, "10.0.0.1")
    env = build_launch(ctx).env
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("3", "1", "4")


def test_hostfile_text():
    assert hostfile_text(("gpu001", "gpu002"), 8) == "gpu001 slots=8\ngpu002 slots=8\n"


HOSTILE_VALUES = ["x y", "$(touch CANARY)", "`touch CANARY`", "a;b|c&d", "'sq'", '"dq"', "\\", "a\\\"b", "$HOME", "",
                  "%j #c", "ü", "--x=1 2", "a  b"]  # fmt: skip


def test_deepspeed_env_values_survive_deepspeeds_own_quoting_in_a_real_shell(tmp_path):
    """The real DeepSpeed code (add_export) wraps our .deepspeed_env values; a real sh must give them back."""
    from types import SimpleNamespace

    from deepspeed.launcher.multinode_runner import MultiNodeRunner

    env = {f"V{i}": v for i, v in enumerate(HOSTILE_VALUES)}
    text = deepspeed_env_text({**env, "NODE_RANK": "0", "MASTER_ADDR": "n1"})
    assert "NODE_RANK" not in text and "MASTER_ADDR" not in text  # per-node values are the launcher's
    runner = SimpleNamespace(exports={})
    for line in text.splitlines():  # as deepspeed.launcher.runner reads the file
        key, val = line.split("=", maxsplit=1)
        MultiNodeRunner.add_export(runner, key, val)
    exports = "".join(f"export {k}={v}; " for k, v in runner.exports.items())  # PDSHRunner.get_cmd
    for shell in ("sh", "bash"):
        script = exports + " ".join(f'printf "%s\\0" "${k}";' for k in env)
        out = subprocess.run([shell, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
        assert out.split("\0")[:-1] == list(env.values()), shell
    assert not list(tmp_path.iterdir()), "a command inside a value ran"


def test_user_arguments_survive_the_pdsh_runners_own_quoting_in_a_real_shell(tmp_path):
    from types import SimpleNamespace

    from deepspeed.launcher.multinode_runner import PDSHRunner

    encoded = [pdsh_user_arg(v) for v in HOSTILE_VALUES]
    passed = PDSHRunner.parse_user_args(SimpleNamespace(args=SimpleNamespace(user_args=encoded)))
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + " ".join(passed)], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout  # fmt: skip
    assert out.split("\0")[:-1] == HOSTILE_VALUES
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {
                "OMPI_COMM_WORLD_RANK": "3",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            },
            {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
        ),
        (
            {"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_SIZE": "4", "MV2_COMM_WORLD_LOCAL_RANK": "0"},
            {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"},
        ),
        ({"RANK": "1", "OMPI_COMM_WORLD_RANK": "3"}, {}),  # torch names already set: untouched
        ({}, {}),
    ],
)
def test_torch_rank_env_from_mpi(env, expected):
    assert torch_rank_env(env) == expected


IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.200.0.11/24 brd 10.200.0.255 scope global eth0\\       valid_lft forever preferred_lft forever
3: ib0    inet 172.16.4.2/16 brd 172.16.255.255 scope global ib0\\       valid_lft forever preferred_lft forever
"""


def test_master_subnet_from_ip_addr():
    entries = parse_ip_addr(IP_ADDR)
    assert [name for name, _ in entries] == ["lo", "eth0", "ib0"]
    assert subnet_of("10.200.0.11", entries) == "10.200.0.0/24"
    assert subnet_of("172.16.4.2", entries) == "172.16.0.0/16"
    with pytest.raises(LaunchError, match="network_interface"):
        subnet_of("192.168.1.1", entries)


@pytest.mark.parametrize(
    ("time", "minutes"), [("90", 90), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-2:30", 1590), ("0-0:0:1", 1)]
)
def test_slurm_minutes(time, minutes):
    assert slurm_minutes(time) == minutes


def test_submitit_parameters_mirror_the_resources():
    spec = build_spec(
        {
            "launch": {"backend": "submitit", "command": ["/x.py"], "setup": ["module load a"]},
            "resources": {
                "nodes": 2,
                "gpus_per_node": 4,
                "time": "1:00:00",
                "partition": "p",
                "exclusive": True,
                "extra_sbatch": ["--reservation=r", "--requeue"],
            },
        }
    )
    assert executor_parameters(spec) == {
        "name": "job",
        "nodes": 2,
        "tasks_per_node": 1,
        "timeout_min": 60,
        "gpus_per_node": 4,
        "slurm_partition": "p",
        "slurm_exclusive": True,
        "slurm_setup": ["module load a"],
        "slurm_additional_parameters": {"reservation": "r", "requeue": True},
    }
    warned = executor_parameters(spec, signal_lead=120)  # submitit's own warning, and SLURM may requeue
    assert warned["slurm_signal_delay_s"] == 120 and warned["slurm_additional_parameters"]["requeue"] is True
    per_rank = build_spec({"launch": {"launcher": "srun", "command": ["/x.py"]}, "resources": {"gpus_per_node": 4}})
    assert executor_parameters(per_rank)["tasks_per_node"] == 4
    # submitit's own srun line gets the CPUs too: srun does not inherit them (SLURM >= 22.05)
    cpus = executor_parameters(build_spec({"launch": {"command": ["/x.py"]}, "resources": {"cpus_per_task": 6}}))
    assert cpus["cpus_per_task"] == 6 and cpus["slurm_srun_args"] == ["--cpus-per-task=6"]


def test_pdsh_env_file_forwards_job_settings_but_never_secrets():
    env = {"TORCH_EXTENSIONS_DIR": "/cache/ext dir", "HF_TOKEN": "hf_secret", "OMP_NUM_THREADS": "1",
           "HPCFT_HEARTBEAT_DIR": "/dev/shm/hpcft-7", "HPCFT_AGENT_PID": "4242"}  # fmt: skip
    ctx = LaunchContext(spec_for("deepspeed-pdsh"), node_env(0), RUN, PY, "10.0.0.1", None, env)
    text = build_launch(ctx).files[".deepspeed_env"]
    assert "TORCH_EXTENSIONS_DIR=/cache/ext dir\n" in text and "OMP_NUM_THREADS=1\n" in text
    # the ranks over ssh publish their progress for their node's watcher; the agent's pid is node 0's only
    assert "HPCFT_HEARTBEAT_DIR=/dev/shm/hpcft-7\n" in text and "4242" not in text
    assert "hf_secret" not in text and "HF_TOKEN" not in text


COMMAND = ["train.py", "--deepspeed", "{ds_config}", "--output_dir", "{output_dir}", "--resume_from_checkpoint",
           "{resume_checkpoint}", "--node", "{node_rank}/{nnodes}", "--json", "{{}}"]  # fmt: skip


def test_a_user_command_gets_its_placeholders_in_each_rank_at_each_start(tmp_path):
    spec = build_spec({"train": {"zero": 3}, "resources": {"nodes": 2, "gpus_per_node": 2},
                       "launch": {"backend": "sbatch", "command": COMMAND}})  # fmt: skip
    cmd = build_launch(LaunchContext(spec, node_env(1), RUN, PY, "10.200.0.11"))
    # The node passes the command as written; each rank fills it in when it starts (hpcft.node.rank_exec).
    assert cmd.argv[-(len(COMMAND) + 3) :] == ("-m", "hpcft.node.rank_exec", "script", *COMMAND)
    assert cmd.env["HPCFT_DS_CONFIG"] == f"{RUN}/ds_config.json" and cmd.env["HPCFT_NODE_RANK"] == "1"
    ckpt = f"{RUN}/checkpoints/checkpoint-40"
    argv = rank_exec.rank_argv("script", "train.py", COMMAND[1:], cmd.env, PY, resume=ckpt)
    assert argv == [PY, "-u", "train.py", "--deepspeed", f"{RUN}/ds_config.json", "--output_dir", f"{RUN}/checkpoints",
                    "--resume_from_checkpoint", ckpt, "--node", "1/2", "--json", "{}"]  # fmt: skip
    # A fresh start: the flag goes with its empty value (an HF script would fail on ''), issue #25 item 1.
    fresh = rank_exec.rank_argv("script", "train.py", [*COMMAND[1:], "--also={resume_checkpoint}"], cmd.env, PY, "")
    assert fresh == [PY, "-u", "train.py", "--deepspeed", f"{RUN}/ds_config.json", "--output_dir", f"{RUN}/checkpoints",
                     "--node", "1/2", "--json", "{}"]  # fmt: skip


def test_each_start_reads_the_newest_checkpoint_then(tmp_path):
    from hpcft.rundir import checkpoints

    out = tmp_path / "checkpoints"
    out.mkdir()
    env = {"HPCFT_OUTPUT_DIR": str(out)}
    assert rank_exec.resume_now(env) == ""  # the job's first start
    for step in (10, 20):  # what the crashed ranks saved before torchrun restarted them
        staged = tmp_path / f"staged-{step}"
        staged.mkdir()
        (staged / "model.safetensors").write_bytes(b"x")
        checkpoints.commit(staged, out, step=step, world_size=4, zero_stage=0)
    assert rank_exec.resume_now(env) == str(out / "checkpoint-20")


@pytest.mark.parametrize(
    ("env", "first"),
    [
        ({"RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}, True),
        ({"NODE_RANK": "0"}, True),
        ({"NODE_RANK": "1"}, False),
    ],
)
def test_the_first_rank_records_the_start(env, first):
    assert rank_exec.first_rank(env) is first


@pytest.mark.parametrize(
    ("launcher", "before"),
    [
        ("torchrun", ("-m",)),
        ("deepspeed", ("--module",)),
        ("accelerate", ("--module",)),
        ("srun", (PY, "-u", "-m")),
        ("none", (PY, "-u", "-m")),
    ],
)
def test_modules_and_programs_run_under_every_launcher(launcher, before):
    for command, kind in ((["-m", "pkg.train", "--x"], "module"), (["my-trainer", "sft"], "program")):
        ctx = LaunchContext(spec_for(launcher, command=command), node_env(0), RUN, PY, "10.0.0.1")
        argv = build_launch(ctx).argv
        target, args = (command[1], command[2:]) if kind == "module" else (command[0], command[1:])
        tail = (*before, "hpcft.node.rank_exec", kind, target, *args)
        assert argv[-len(tail) :] == tail, argv
        if launcher in ("srun", "none"):
            assert argv == tail  # no launcher process between SLURM and the command
        ran = rank_exec.rank_argv(kind, target, args, {}, PY, "")
        assert ran == ([PY, "-u", "-m", "pkg.train", "--x"] if kind == "module" else ["my-trainer", "sft"])


def test_torchrun_runs_with_hpcfts_rendezvous_fixes_warm_or_cold():
    """Every torchrun agent hpcft starts has the rendezvous's 1 s polls fixed (hpcft.train.elastic_workarounds):
    the warm agent for hpcft's trainer, ``hpcft.train.torchrun`` for a user's command or cold ranks."""
    cases = [({}, "hpcft.train.warm"), ({"warm_start": False}, "hpcft.train.torchrun"),
             ({"command": ["my-trainer", "sft"]}, "hpcft.train.torchrun")]  # fmt: skip
    for launch, runner in cases:
        argv = build_launch(LaunchContext(spec_for("torchrun", **launch), node_env(0), RUN, PY, "10.0.0.1")).argv
        assert argv[0] == PY and argv[argv.index("-m") + 1] == runner, argv


def test_an_elastic_world_lets_the_agents_left_re_form_it_within_seconds():
    """With ``resources.min_nodes`` (``JobSpec.survivor_nodes``), torchrun's agents accept LOW to N nodes and notice
    a dead one within seconds; without, the world is fixed and torch's timings stand."""
    from hpcft.launchers.torchrun import SURVIVORS_RDZV_CONF

    spec = spec_for("torchrun")
    left = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, min_nodes=1))
    elastic = build_launch(LaunchContext(left, node_env(0), RUN, PY, "10.0.0.1", restarts=3)).argv
    assert "--nnodes=1:2" in elastic and f"--rdzv-conf={SURVIVORS_RDZV_CONF}" in elastic
    conf = dict(kv.split("=") for kv in SURVIVORS_RDZV_CONF.split(","))
    noticed = int(conf["keep_alive_interval"]) * int(conf["keep_alive_max_attempt"])  # a dead agent's heartbeat missed
    assert noticed + float(conf["last_call_timeout"]) < 10  # torch's own: 5 × 3 + 30 s
    fixed = build_launch(LaunchContext(spec, node_env(0), RUN, PY, "10.0.0.1", restarts=3)).argv
    assert "--nnodes=2" in fixed and not any(a.startswith("--rdzv-conf") for a in fixed)


def test_nodes_without_gpus_make_a_users_accelerate_script_use_one_cpu_world():
    for launcher in ("accelerate", "torchrun"):
        ctx = LaunchContext(spec_for(launcher, command=["t.py"]), node_env(0), RUN, PY, "10.0.0.1", node_has_gpu=False)
        assert build_launch(ctx).env["ACCELERATE_USE_CPU"] == "true"
        gpu = LaunchContext(spec_for(launcher, command=["t.py"]), node_env(0), RUN, PY, "10.0.0.1", node_has_gpu=True)
        assert "ACCELERATE_USE_CPU" not in build_launch(gpu).env
    # hpcft's trainer sets use_cpu itself; with DeepSpeed the flag would make accelerate drop DeepSpeed.
    own = LaunchContext(spec_for("torchrun"), node_env(0), RUN, PY, "10.0.0.1", node_has_gpu=False)
    assert "ACCELERATE_USE_CPU" not in build_launch(own).env
    zero = build_spec({"train": {"zero": 2}, "resources": {"nodes": 2}, "launch": {"command": ["t.py"]}})
    ds = LaunchContext(zero, node_env(0), RUN, PY, "10.0.0.1", node_has_gpu=False)
    assert "ACCELERATE_USE_CPU" not in build_launch(ds).env


def test_the_doctors_own_braces_reach_its_probe_unchanged(tmp_path):
    from hpcft.tools.doctor import plan_doctor

    plan = plan_doctor(None, {"resources.nodes": 2, "run.runs_dir": str(tmp_path)}, [], None, 240, python=PY,
                       now=NOW, check_nvme=False, shared_dirs=["/shared/view-{node}"])  # fmt: skip
    argv = plan.node_preview.argv
    at = argv.index("hpcft.node.rank_exec")
    ran = rank_exec.rank_argv(argv[at + 1], argv[at + 2], argv[at + 3 :], {}, PY, "")
    assert ran[-1] == "/shared/view-{node}"  # not a launch.command placeholder


@pytest.mark.parametrize(
    ("launcher", "where"),
    [("deepspeed-openmpi", "argv"), ("deepspeed-mvapich", "argv"), ("deepspeed-pdsh", "env")],
)
def test_head_node_launchers_pass_secrets_by_name_only(launcher, where):
    """mpirun -x NAME, hydra -genvlist NAME, ssh -o SendEnv=NAME: the value is never in argv, env or files."""
    node = {"HF_TOKEN": "hf_the_value", "PDSH_SSH_ARGS_APPEND": "-p 2222"}
    ctx = LaunchContext(spec_for(launcher, env_passthrough=["HF_TOKEN"]), node_env(0), RUN, PY, "10.0.0.1",
                        "10.0.0.0/24", node)  # fmt: skip
    cmd = build_launch(ctx)
    text = " ".join(cmd.argv) + repr(cmd.env) + "".join(cmd.files.values())
    assert "hf_the_value" not in text
    expected = {"deepspeed-openmpi": "-x HF_TOKEN", "deepspeed-mvapich": "-genvlist HF_TOKEN",
                "deepspeed-pdsh": "-p 2222 -o SendEnv=HF_TOKEN"}[launcher]  # fmt: skip
    assert expected in (" ".join(cmd.argv) if where == "argv" else cmd.env["PDSH_SSH_ARGS_APPEND"])


def test_a_rank_started_by_the_deepspeed_launcher_gets_its_local_rank_where_deepspeed_puts_it(tmp_path):
    # deepspeed's launch.py runs `python -u -m hpcft.node.rank_exec --local_rank=0 KIND TARGET ARGS...`.
    import subprocess
    import sys

    env = {"PATH": os.environ["PATH"], "HPCFT_RUN_DIR": str(tmp_path), "HPCFT_OUTPUT_DIR": str(tmp_path), "RANK": "0"}
    argv = [sys.executable, "-m", "hpcft.node.rank_exec", "--local_rank=0", "program", "echo", "a b", "{run_dir}"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60).stdout
    assert out == f"hpcft: rank 0 runs echo --local_rank=0 'a b' {tmp_path}\n--local_rank=0 a b {tmp_path}\n"
