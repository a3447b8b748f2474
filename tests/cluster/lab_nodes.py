"""A lab node's power loss, and its return: every process of its namespace killed, its slurmd started again."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO, wait_until


def crash_node(name: str) -> None:
    """Kill every process of a lab node (a network + UTS namespace): slurmd, step daemons, ranks, sshd."""
    pids = subprocess.run(["ip", "netns", "pids", f"sl{name.replace('node', 'ns')}"], capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    assert pids, f"no processes in {name}'s namespace"
    subprocess.run(["kill", "-9", *pids], check=False)


def restore_node(name: str) -> None:
    """Start the node's slurmd again (and the lab's sshd); wait until SLURM has it back (ReturnToService=2)."""
    ns = f"/run/netns/sl{name.replace('node', 'ns')}"
    subprocess.run(["nsenter", f"--net={ns}", "unshare", "--uts", "sh", "-c", f"hostname {name} && exec slurmd -N "
                    f"{name}"], check=True)  # fmt: skip
    subprocess.run(["bash", str(REPO / "scripts" / "lab" / "sshd.sh"), "up"], check=True, capture_output=True)
    wait_until(f"{name} back", lambda: node_state(name) in ("idle", "mixed", "allocated"), timeout=120)


def slurmd_timeout() -> int:
    """The lab's SlurmdTimeout in seconds, as slurmctld runs it (``scontrol show config``)."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    (line,) = [x for x in out.splitlines() if x.split("=")[0].strip() == "SlurmdTimeout"]
    return int(line.split("=", 1)[1].split()[0])


def node_state(name: str) -> str:
    out = subprocess.run(["sinfo", "-h", "-N", "-n", name, "-o", "%T"], capture_output=True, text=True).stdout
    return (out.split() or ["?"])[0]
