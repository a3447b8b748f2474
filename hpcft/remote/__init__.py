"""Working from a workstation: the same commands on a SLURM cluster reached over SSH (``--cluster NAME``).

In the order the data flows:

* ``clusters`` — the user's named clusters (``~/.config/hpcft/clusters.yaml``): reading, checking, writing;
* ``ssh`` — the only caller of ``ssh`` and ``rsync``: one multiplexed connection per cluster, every remote
  command quoted once, a lost connection an error of its own;
* ``stage`` — which local files a job names, addressed by content, and the job file rewritten to their copies;
* ``submit`` — a remote submission that is resumed, never repeated, when the connection drops (its journal on
  the cluster side is ``hpcft.rundir.intents``);
* ``forward`` — every other command: the remote hpcft runs it against the cluster's runs directory.

Everything that touches SLURM or a run directory runs on the cluster, in the remote hpcft; this side only
moves files and argv.
"""
