"""hpcft: LLM fine-tuning on SLURM clusters, from one job description to N nodes."""

__version__ = "0.1.0"
