"""The probe ``hpcft doctor`` runs on every rank of a small job (under torchrun, like a real job).

Decides, from inside the allocation, whether the nodes can run a multi-node fine-tuning job:
rendezvous and an all-reduce across nodes (with latency and bandwidth), the run directory and the
HF cache being one shared filesystem (node 0 writes, the others read, rename and lock), the NVMe
offload path being node-local with room and async_io building (only with ``--check-nvme``), the GPU
count, and equal Python/torch/hpcft versions. Each node's local rank 0 first writes its facts to
``RUN/doctor/node-<host>.json`` (before any collective, so a broken rendezvous still leaves them);
global rank 0 writes every check to ``RUN/doctor/report.json``. Nothing here prints a verdict:
``hpcft doctor`` reads the files on the submit host.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from hpcft.rundir import store
from hpcft.slurm.env import node_name
from hpcft.tools import doctor_fs
from hpcft.tools.doctor_fs import check

DOCTOR_DIR = "doctor"
INIT_TIMEOUT = timedelta(seconds=120)


@dataclass
class Probe:
    """This rank's place in the job and the collectives the checks use."""

    rank: int
    world: int
    local_rank: int
    host: str
    job: str
    out: Path
    device: str = "cpu"

    @property
    def leader(self) -> bool:
        """Local rank 0: the one process per node that does the per-node checks."""
        return self.local_rank == 0

    def barrier(self) -> None:
        """All ranks meet."""
        import torch.distributed as dist

        dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The probe's options (set by ``hpcft doctor``)."""
    p = argparse.ArgumentParser(prog="python -m hpcft.tools.doctor_probe")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--shared-dir", action="append", default=[], help="another directory that must be shared")
    p.add_argument("--nvme-path")
    p.add_argument("--check-nvme", action="store_true")
    p.add_argument("--nvme-need-gb", type=float, default=0.0)
    p.add_argument("--bandwidth-mb", type=int, default=16)
    return p.parse_args(argv)


def hf_cache_dir(env: dict[str, str]) -> str:
    """Where huggingface_hub keeps its cache: ``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``."""
    if env.get("HF_HOME"):
        return env["HF_HOME"]
    return os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")


def node_facts(args: argparse.Namespace, host: str) -> dict[str, Any]:
    """Versions and GPUs as this node sees them (no import of the heavy libraries but torch)."""
    import torch

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return {
        "host": host,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hpcft": version("hpcft"),
        "transformers": version("transformers"),
        "deepspeed": version("deepspeed"),
        "gpus": torch.cuda.device_count() if cuda else len(visible),
        "gpu_source": "torch.cuda" if cuda else f"CUDA_VISIBLE_DEVICES={','.join(visible)} (torch sees no CUDA)",
        "slurm_nnodes": os.environ.get("SLURM_NNODES"),
        "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
    }


def version_checks(facts: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Python, torch and hpcft must be equal on every node (transformers/deepspeed: a warning)."""
    rows = []
    for key, bad in (
        ("python", "fail"),
        ("torch", "fail"),
        ("hpcft", "fail"),
        ("transformers", "warn"),
        ("deepspeed", "warn"),
    ):
        seen = {f["host"]: f[key] for f in facts}
        values = sorted({str(v) for v in seen.values()})
        if len(values) == 1:
            rows.append(check(f"{key} version", "all", "pass", values[0]))
        else:
            detail = ", ".join(f"{h}={v}" for h, v in sorted(seen.items()))
            rows.append(check(f"{key} version", "all", bad, detail, "install the same environment on every node"))
    return rows


def gpu_checks(facts: list[dict[str, Any]], expected: int) -> list[dict[str, str]]:
    """Every node has the number of GPUs the config asks for."""
    if expected == 0:
        return [check("GPU count", "all", "skip", "the config asks for no GPUs (CPU processes)")]
    rows = []
    for f in facts:
        ok = f["gpus"] == expected
        detail = f"{f['gpus']} found, {expected} expected; from {f['gpu_source']}"
        hint = "" if ok else "ask SLURM for them (--gpus-per-node) or fix the node's gres.conf / drivers"
        rows.append(check("GPU count", f["host"], "pass" if ok else "fail", detail, hint))
    return rows


def collective_checks(probe: Probe, facts: list[dict[str, Any]], bandwidth_mb: int) -> list[dict[str, str]]:
    """Rendezvous (world size, one node per host) and an all-reduce: result, latency, bandwidth."""
    import torch
    import torch.distributed as dist

    hosts = sorted({f["host"] for f in facts})
    expected_nodes = int(facts[0]["slurm_nnodes"] or len(hosts))
    ok = len(hosts) == expected_nodes
    rows = [
        check(
            "rendezvous",
            "all",
            "pass" if ok else "fail",
            f"world size {probe.world} on {len(hosts)} node(s) ({', '.join(hosts)}); master {facts[0]['master']}",
            "" if ok else "some nodes did not join; see `hpcft logs RUN`",
        ),
    ]
    x = torch.tensor([float(probe.rank + 1)], device=probe.device)
    dist.all_reduce(x)
    want = probe.world * (probe.world + 1) / 2
    latency = _timed(lambda: dist.all_reduce(torch.zeros(1, device=probe.device)), repeat=20)
    n = bandwidth_mb * 1024 * 1024 // 4
    big = torch.ones(n, device=probe.device)
    seconds = _timed(lambda: dist.all_reduce(big), repeat=3)
    bus = 2 * (probe.world - 1) / probe.world * n * 4 / seconds / 1e9 if probe.world > 1 else 0.0
    # ``big`` went through one warm-up and three timed all-reduces of ones: world**4 everywhere.
    good = abs(x.item() - want) < 1e-6 and big[0].item() == probe.world**4
    detail = f"sum {x.item():g} (expected {want:g}); latency {latency * 1e6:.0f} µs; bus bandwidth {bus:.2f} GB/s"
    detail += f" ({bandwidth_mb} MiB, {dist.get_backend()})"
    rows.append(
        check(
            "all-reduce",
            "all",
            "pass" if good else "fail",
            detail,
            "" if good else "wrong all-reduce result: check the network interface (NCCL/GLOO_SOCKET_IFNAME)",
        )
    )
    return rows


def _timed(fn, repeat: int) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs after one warm-up."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_checks(probe: Probe, args: argparse.Namespace, facts: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every check, in the order of the table."""
    run = Path(os.environ["HPCFT_RUN_DIR"])
    rows = collective_checks(probe, facts, args.bandwidth_mb)
    rows += doctor_fs.shared_dir_check(probe, "run dir shared", str(run), "fail")
    for extra in args.shared_dir:
        rows += doctor_fs.shared_dir_check(probe, "dir shared", extra, "fail")
    rows += doctor_fs.shared_dir_check(probe, "HF cache shared", hf_cache_dir(dict(os.environ)), "warn")
    rows += doctor_fs.nvme_checks(probe, args.nvme_path, args.check_nvme, args.nvme_need_gb)
    rows += gpu_checks(facts, args.gpus_per_node)
    rows += version_checks(facts)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run every check on this rank; rank 0 writes ``RUN/doctor/report.json``."""
    from hpcft.train.dist import exit_cleanly

    try:
        probe_all(parse_args(argv))
    except BaseException:
        traceback.print_exc()
        exit_cleanly(1)
    exit_cleanly(0)


def probe_all(args: argparse.Namespace) -> None:
    """Write this node's facts, join the process group, run the checks, write the report."""
    import torch
    import torch.distributed as dist

    run = Path(os.environ["HPCFT_RUN_DIR"])
    host = node_name(os.environ)
    probe = Probe(
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
        host,
        os.environ.get("HPCFT_JOB_ID", "local"),
        run / DOCTOR_DIR,
    )
    facts = node_facts(args, host)
    cuda = facts["gpu_source"] == "torch.cuda"
    if cuda:
        torch.cuda.set_device(probe.local_rank)
        probe.device = f"cuda:{probe.local_rank}"
    if probe.leader:
        probe.out.mkdir(exist_ok=True)
        store.write_atomic(probe.out / f"node-{host}.json", json.dumps(facts, indent=2) + "\n")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=INIT_TIMEOUT)
    all_facts = [f for f in probe.gather(facts if probe.leader else None) if f]
    rows = run_checks(probe, args, all_facts)
    if probe.rank == 0:
        report = {"job": probe.job, "world_size": probe.world, "nodes": all_facts, "checks": rows}
        store.write_atomic(probe.out / "report.json", json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
