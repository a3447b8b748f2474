"""Following a run: ``status``, ``logs``, ``plot``. They read the run directory and SLURM, never write."""
