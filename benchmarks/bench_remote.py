"""P18: working from a workstation. What a remote command costs over hpcft's shared ssh connection against a new
connection per call, and what a second submission of unchanged inputs sends.

    scripts/dev-cluster up; .venv/bin/python benchmarks/bench_remote.py [--pairs 5] [--cluster lab]

Pairs alternate which way goes first (this machine is noisy; medians). The cluster is the lab's login node as
``scripts/dev-cluster up`` registers it (``hpcft clusters``):
- *round trip*: ``true`` on the login node, through ``hpcft.remote.ssh`` (ControlMaster: the connection opened
  once, kept 5 minutes) against plain ``ssh`` with the same options and no sharing (a handshake per call);
- *status*: ``hpcft status --cluster NAME`` (a remote hpcft's start-up on top), warm;
- *staging*: the demo's model, tokenizer and data copied by a first ``hpcft submit --dry-run --cluster`` and by a
  second of the same inputs: bytes sent (rsync's count) and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import report  # benchmarks/ is sys.path[0] when a benchmark runs as a script

HPCFT = [sys.executable, "-m", "hpcft"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(args) -> tuple[str, str]:
    from hpcft.remote import clusters, ssh

    cluster = clusters.chosen(args.cluster, clusters.load())
    plain = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none"] + [
        f for name, value in cluster.ssh_options.items() for f in ("-o", f"{name}={value}")
    ]

    def shared() -> None:
        assert ssh.run(cluster, ["true"]).returncode == 0

    def fresh() -> None:
        subprocess.run([*plain, cluster.host, "true"], check=True, capture_output=True)

    shared()  # open the shared connection
    pairs = []
    for i in range(args.pairs):
        order = (shared, fresh) if i % 2 == 0 else (fresh, shared)
        t = {fn.__name__: timed(fn) for fn in order}
        pairs.append(t)
    rt_shared = statistics.median(p["shared"] for p in pairs)
    rt_fresh = statistics.median(p["fresh"] for p in pairs)
    status = statistics.median(
        timed(lambda: subprocess.run([*HPCFT, "status", "--cluster", cluster.name], check=True, capture_output=True))
        for _ in range(args.pairs)
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    subprocess.run([*HPCFT, "init-demo", str(tmp / "demo")], check=True, capture_output=True)
    (tmp / "demo" / "model" / "nonce.txt").write_text(uuid.uuid4().hex)  # new content: a first copy, always
    sent, took = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        proc = subprocess.run([*HPCFT, "submit", str(tmp / "demo" / "job.yaml"), "--cluster", cluster.name,
                               "--dry-run"], capture_output=True, text=True, check=True)  # fmt: skip
        took.append(time.perf_counter() - t0)
        sent.append(int(re.search(r"\((\d+) bytes sent\)", proc.stderr).group(1)))
    size = sum(f.stat().st_size for f in (tmp / "demo").rglob("*") if f.is_file())
    result = {"bench": "remote", "pairs": args.pairs, "round_trip_shared_s": round(rt_shared, 3),
              "round_trip_fresh_s": round(rt_fresh, 3), "status_s": round(status, 2), "inputs_bytes": size,
              "first_submit_sent": sent[0], "second_submit_sent": sent[1], "first_submit_s": round(took[0], 2),
              "second_submit_s": round(took[1], 2), "cpus": os.cpu_count()}  # fmt: skip
    row = (f"| P18 workstation | round trip {rt_shared * 1000:.0f} ms shared vs {rt_fresh * 1000:.0f} ms a connection "
           f"each ({rt_shared / rt_fresh:.2f}); `status --cluster` {status:.2f} s | {args.pairs} pairs, medians; "
           f"staging {size} B of inputs: first submit sent {sent[0]} B in {took[0]:.1f} s, the second {sent[1]} B "
           f"in {took[1]:.1f} s |")  # fmt: skip
    return json.dumps(result), row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--cluster", default="lab")
    report(lambda: measure(parser.parse_args()))


if __name__ == "__main__":
    main()
