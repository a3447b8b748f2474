"""Names of the marker files in a run directory that the CLI side and the training side share."""

FINISHED_FILE = "FINISHED"  # the run reached its last step (rank 0, after the final save)
REQUEUE_FILE = "REQUEUE"  # the ranks checkpointed after the warning signal; the job asks to be requeued
PREEMPT_FILE = "PREEMPT"  # the batch script's USR1 trap: "checkpoint at your next step and stop"
RESUME_FROM_FILE = "RESUME_FROM"  # `hpcft resume --checkpoint N`: the checkpoint to continue from
FATAL_FILE = "FATAL"  # a problem a requeue cannot fix: a node's preflight, or a configuration error in training

# Left over by the previous job; a resumed run starts without them.
STOP_MARKERS = (FINISHED_FILE, REQUEUE_FILE, PREEMPT_FILE, FATAL_FILE)
