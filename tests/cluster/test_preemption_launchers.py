"""Priority preemption with every launcher of the table, as SLURM really does it (``test_preemption.py``'s drill).

SLURM's preemption SIGTERM reaches only the tasks srun started, and each launcher puts hpcft node in a different
place: one step task per node (torchrun, deepspeed, accelerate: test_preemption.py has torchrun), each rank a step
task itself (srun: the trainer turns the SIGTERM into a save), or one step task on the first node that starts the
other nodes' ranks over ssh (deepspeed-pdsh, deepspeed-openmpi). In every case the ranks must save within the
grace time, the job requeue, and the run resume at the step it reached. deepspeed-mvapich takes the head-node
path too but cannot run here: the lab has no MVAPICH2-GDR (Debian does not package it).
"""

from __future__ import annotations

import pytest

from tests.cluster.test_preemption import HEARD, preempt_and_resume
from tests.conftest import SSH_SETUP

pytestmark = pytest.mark.cluster

LAUNCHERS = {
    "deepspeed-pdsh": ["--launcher", "deepspeed-pdsh", "-o", SSH_SETUP],
    "deepspeed-openmpi": ["--launcher", "deepspeed-openmpi", "-o", SSH_SETUP],
    "deepspeed": ["--launcher", "deepspeed"],
    "accelerate": ["--launcher", "accelerate"],
    "srun": ["--launcher", "srun"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_priority_preemption_checkpoints_and_resumes_with_every_launcher(lab, demo_dir, runs_dir, launcher):
    # srun: every rank is a step task and takes the SIGTERM itself (no hpcft node in between).
    heard = {"srun": "SIGTERM reached the ranks themselves (srun launcher)"}.get(launcher, HEARD)
    preempt_and_resume(demo_dir, runs_dir, *LAUNCHERS[launcher], heard=heard)
