"""The node side: ``hpcft node`` (agent: SLURM env → launcher → exec) and ``hpcft after-job``.

Runs on the compute nodes before any rank exists; imports no torch and no planner beyond the
requeue policy.
"""
