"""The submitit backend: the same resources through submitit's ``AutoExecutor``.

submitit writes and submits its own batch script (in ``RUN/submitit/``); its pickled callable
(``hpcft.node.submitit_task.NodeTask``) runs begin-job, ``hpcft node RUN`` and after-job on every node
— ``hpcft node`` only on the first node for head-node launchers (pdsh/MPI) — and turns SLURM's
preemption SIGTERM and submitit's time-limit warning into checkpoints and requeues. State, logs and
cancel go through SLURM as for sbatch.
``prepare`` and ``executor_parameters`` are pure (what the plan shows); submitit itself is imported
only by ``start``.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import yaml

from hpcft.backends.base import Prepared
from hpcft.errors import SubmissionError
from hpcft.launchers.base import shape_of
from hpcft.node.submitit_task import NodeTask
from hpcft.rundir import store
from hpcft.slurm import client
from hpcft.slurm.env import ClusterEnv
from hpcft.spec.model import slurm_minutes

if TYPE_CHECKING:
    from hpcft.plan.plan import Plan
    from hpcft.spec import JobSpec

FOLDER = "submitit"
PARAMS_FILE = "submitit.yaml"


def prepare(spec: JobSpec, run: str, node_argv: tuple[str, ...], signal_lead: int | None) -> Prepared:
    """``submitit.yaml`` (the executor's parameters, for reference) and a description of the submit call."""
    params = executor_parameters(spec, signal_lead)
    text = "# submitit AutoExecutor parameters (reference; submitit writes its own script)\n" + yaml.safe_dump(
        params, sort_keys=False
    )
    argv = ("submitit.AutoExecutor", f"folder={PurePath(run) / FOLDER}", *sorted(params))
    return Prepared({PARAMS_FILE: text}, argv, ClusterEnv.preview(spec.resources.nodes, spec.resources.gpus_per_node))


def executor_parameters(spec: JobSpec, signal_lead: int | None = None) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments for the spec's resources; pure.

    With a warning lead, submitit's own warning (``--signal=USR2@LEAD`` to every task) comes that long
    before the time limit, and ``--requeue`` lets SLURM requeue the job after preemption or node loss.
    """
    res = spec.resources
    tasks = 1 if shape_of(spec.launch.launcher) != "per_rank" else (res.gpus_per_node or 1)
    params: dict[str, Any] = {
        "name": spec.run.name,
        "nodes": res.nodes,
        "tasks_per_node": tasks,
        # submitit always writes --time; 0 = no limit of the job's own (the partition's applies).
        "timeout_min": slurm_minutes(res.time) if res.time else 0,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.cpus_per_task:
        params["cpus_per_task"] = res.cpus_per_task
        # submitit's srun line has no --cpus-per-task, and srun no longer inherits it (SLURM 22.05): where steps
        # are exclusive the tasks would get one CPU each (docs/facts.md; the sbatch backend exports SRUN_CPUS_PER_TASK)
        params["slurm_srun_args"] = [f"--cpus-per-task={res.cpus_per_task}"]
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(res, key) is not None:
            params[f"slurm_{key}"] = getattr(res, key)
    if res.exclusive:
        params["slurm_exclusive"] = True
    if spec.launch.setup:
        params["slurm_setup"] = list(spec.launch.setup)
    extra = dict(_split_flag(f) for f in res.extra_sbatch)
    if signal_lead:
        params["slurm_signal_delay_s"] = signal_lead
        extra.setdefault("requeue", True)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def _split_flag(flag: str) -> tuple[str, Any]:
    key, sep, value = flag.lstrip("-").partition("=")
    return key.replace("-", "_"), (value if sep else True)


def start(plan: Plan, run: Path) -> str:
    """Submit through submitit (its own script in ``RUN/submitit``); return the job id."""
    import submitit

    params = yaml.safe_load(plan.files[PARAMS_FILE])  # what the plan showed is what is submitted
    lead = params.get("slurm_signal_delay_s")
    try:
        # hpcft's budgets decide requeues (NodeTask.checkpoint): submitit's count of timeouts is no limit.
        executor = submitit.AutoExecutor(folder=run / FOLDER, cluster="slurm", slurm_max_num_timeout=1_000_000)
        executor.update_parameters(**params)
        head_only = shape_of(plan.spec.launch.launcher) == "head_node"
        job = executor.submit(NodeTask(plan.spec.launch.python, str(run), head_only, lead))
    except Exception as e:  # submitit wraps sbatch failures in its own exception types
        raise SubmissionError(["submitit", "sbatch"], 1, str(e), "nothing was submitted") from None
    store.record_job(run, str(job.job_id))
    return str(job.job_id)


def cancel(job: dict) -> None:
    """``scancel`` the job (submitit's jobs are SLURM jobs)."""
    client.cancel(job["id"])
