"""Containers (``launch.container``): every node's ``hpcft node`` — and so the launcher and the ranks —
runs inside the image; pure.

- **apptainer**: the srun task is ``apptainer exec --nv --bind RUNS,MOUNTS IMAGE PYTHON -m hpcft node RUN``.
- **pyxis** (enroot's SPANK plugin): srun itself takes ``--container-image=IMAGE
  --container-mounts=RUNS:RUNS,MOUNTS``, and the task is ``PYTHON -m hpcft node RUN``.

The runs directory is mounted at the same path, so the run directory, the rendezvous files and the
checkpoints are where the host's steps (begin-job, after-job: outside the image) see them. Both runtimes
pass the job's environment (SLURM's variables included) into the container, so ``hpcft node`` derives
the rendezvous inside as it does outside. Head-node launchers (deepspeed over pdsh/MPI) start remote
processes over ssh, outside any container: refused with them.
"""

from __future__ import annotations

from pathlib import PurePath

from hpcft.spec import JobSpec


def mounts(spec: JobSpec, run: str) -> list[str]:
    """Mounts as SRC:DST: the runs directory at its own path first, then ``launch.container.mounts``."""
    runs = str(PurePath(run).parent)
    return [f"{runs}:{runs}", *(m if ":" in m else f"{m}:{m}" for m in spec.launch.container.mounts)]


def wrap(spec: JobSpec, run: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(extra srun options, the srun task's argv) of a containerized job."""
    c = spec.launch.container
    node = (c.python, "-m", "hpcft", "node", run)
    if c.runtime == "apptainer":
        return (), ("apptainer", "exec", "--nv", "--bind", ",".join(mounts(spec, run)), str(c.image), *node)
    return (f"--container-image={c.image}", f"--container-mounts={','.join(mounts(spec, run))}",
            f"--container-workdir={run}"), node  # fmt: skip
