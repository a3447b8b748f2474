"""Everything that knows SLURM: the environment on a node, script rendering, and the one client."""
