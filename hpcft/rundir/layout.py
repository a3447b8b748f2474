"""The names of the run directory's files, shared by every stage that reads or writes one.

Layout (DESIGN.md)::

    RUN/ spec.yaml state.json job.sbatch ds_config.json accelerate.yaml hostfile metrics.jsonl
         logs/ checkpoints/checkpoint-N/ model/  and the markers below

Only ``hpcft.rundir`` writes state and checkpoints; this module is names only (no I/O), so the
launchers, the planner and the ranks can all import it.
"""

SPEC_FILE = "spec.yaml"  # the resolved spec: the only input of the node and training side
STATE_FILE = "state.json"  # job ids, restarts, failures, events (rundir.store)
SCRIPT_FILE = "job.sbatch"  # the batch script (sbatch backend)
NOTES_FILE = "NOTES.txt"  # what the plan pointed out
DS_CONFIG_FILE = "ds_config.json"  # the DeepSpeed config the ranks read
ACCELERATE_CONFIG_FILE = "accelerate.yaml"  # accelerate launcher's config, written on each node
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step (rank 0)
# metrics.jsonl's train_begin records (one per (re)start), also appended here: ``status`` reads this small
# file and the tail of metrics.jsonl, so a refresh costs the same at step 100 and step 10**6.
METRICS_EVENTS_FILE = "metrics-events.jsonl"
LOGS_DIR = "logs"  # slurm-%j.out and rank logs
CHECKPOINTS_DIR = "checkpoints"  # checkpoint-N/, unless train.output names another directory
MODEL_DIR = "model"  # the final model (trainer.save_model), published like a checkpoint (rundir.publish)
MODEL_STAGING = ".model.staging"  # where the final model is written before it is published as MODEL_DIR

# The markers: their names only; rundir/lifecycle.py alone writes, reads and clears them.
FINISHED_FILE = "FINISHED"  # the run reached its last step (rank 0, after the final save)
REQUEUE_FILE = "REQUEUE"  # the ranks checkpointed after the warning signal; the job asks to be requeued
PREEMPT_FILE = "PREEMPT"  # the batch script's USR1 trap: "checkpoint at your next step and stop"
RESUME_FROM_FILE = "RESUME_FROM"  # `hpcft resume --checkpoint N`: the checkpoint to continue from
FATAL_FILE = "FATAL"  # a problem a requeue cannot fix: a node's preflight, or a configuration error in training


def node_log(host: str) -> str:
    """The log file the ranks on ``host`` append to, each line prefixed ``rank<N>`` (``LOGS_DIR``).

    One file per node, not per rank: 4,096 ranks creating and appending 4,096 files in one directory
    load a shared filesystem's metadata server; ``hpcft logs --rank N`` picks a rank's lines out.
    """
    return f"node-{host}.log"


def port_file(job_id: str, restart: int) -> str:
    """Where the first node publishes the rendezvous port it found free, for the other nodes of this job run."""
    return f".port-{job_id}.{restart}"


def node_accelerate_config(node_rank: int) -> str:
    """The per-node accelerate config of launcher ``none`` (rendezvous inside: no flags can carry it)."""
    return f"accelerate-node{node_rank}.yaml"
