"""Filesystem checks of ``hpcft doctor``'s probe: shared directories and the node-local NVMe path.

Decides whether a directory is one shared filesystem for every node of the job — node 0 writes a
marker; every other node reads it, renames a file of its own into place, and sees node 0's
``flock`` (then takes it once node 0 lets go); node 0 sees the renamed files — and whether the NVMe
offload path is node-local (not a network filesystem, not visible from other nodes), has room, and
DeepSpeed's async_io op builds there. Every rank calls each check (the barriers are collective);
only local rank 0 of each node acts, and global rank 0 turns the results into rows.

A ``{node}`` in a directory is replaced by each node's name. Real jobs never need it; tests use it
to give each node a different view of "the same" path, as a node mounting something else there has.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from hpcft.slurm.env import node_name

NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "glusterfs",
    "9p",
    "afs",
    "orangefs",
    "pvfs2",
    "wekafs",
    "panfs",
    "quobyte",
    "virtiofs",
}
HINTS = {
    "run dir shared": "run.runs_dir must be on a filesystem every node mounts at the same path (NFS, Lustre, GPFS)",
    "dir shared": "mount this directory at the same path on every node",
    "HF cache shared": "set HF_HOME to a shared directory, or every node downloads and caches models separately",
}


def check(name: str, node: str, status: str, detail: str, hint: str = "") -> dict[str, str]:
    """One row of the doctor's table: status is pass, fail, warn or skip."""
    return {"check": name, "node": node, "status": status, "detail": detail, "hint": hint}


def _attempt(fn) -> str:
    """``ok``, or the error ``fn`` raised, as one line."""
    try:
        fn()
    except OSError as e:
        return f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
    return "ok"


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _read_expect(path: Path, text: str) -> None:
    got = path.read_text()
    if got != text:
        raise OSError(0, f"content differs: {got[:40]!r}", str(path))


def _try_lock(path: Path) -> str:
    """``free`` when an exclusive flock on ``path`` could be taken (and was let go), ``held``, or an error."""
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "held"
            fcntl.flock(f, fcntl.LOCK_UN)
            return "free"
    except OSError as e:
        return str(e.strerror or e)


def _peer_steps(probe: Any, path: Path, marker: Path, lock: Path, token: str) -> dict[str, str]:
    """What a node other than node 0 does and sees (collective: every rank calls it)."""
    peer = probe.leader and probe.rank != 0
    mine = path / f"{marker.name}-{probe.host}"
    res: dict[str, str] = {"host": probe.host, "path": str(path)}
    if peer:
        res["read"] = _attempt(lambda: _read_expect(marker, token))
        tmp = mine.with_suffix(".tmp")
        res["rename"] = _attempt(lambda: (_write(tmp, probe.host), os.replace(tmp, mine)))
    probe.barrier()
    holder = open(lock, "a") if probe.rank == 0 and lock.parent.is_dir() else None  # noqa: SIM115
    if holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
    probe.barrier()
    if peer:
        res["lock_held"] = _try_lock(lock)
    probe.barrier()
    if holder:
        holder.close()  # lets go of the lock
    probe.barrier()
    if peer:
        res["lock_free"] = _try_lock(lock)
    return res


def shared_dir_check(probe: Any, name: str, template: str, severity: str) -> list[dict[str, str]]:
    """Rows saying whether ``template`` is one shared filesystem for all nodes (rank 0; [] elsewhere)."""
    path = Path(os.path.expandvars(template.replace("{node}", probe.host)))
    marker, lock = path / f".hpcft-doctor-{probe.job}", path / f".hpcft-doctor-{probe.job}.lock"
    token = f"hpcft doctor job {probe.job}\n"
    wrote = (
        _attempt(lambda: (path.mkdir(parents=True, exist_ok=True), _write(marker, token))) if probe.rank == 0 else ""
    )
    probe.barrier()
    peers = [r for r in probe.gather(_peer_steps(probe, path, marker, lock, token)) if r and "read" in r]
    rows = []
    if probe.rank == 0:
        rows = _shared_rows(name, path, probe.host, wrote, peers, marker, severity)
        for p in (marker, lock):
            with contextlib.suppress(OSError):
                p.unlink()
    probe.barrier()  # node 0 has looked at the peers' files: they may remove them now
    if probe.leader and probe.rank != 0:
        with contextlib.suppress(OSError):
            (path / f"{marker.name}-{probe.host}").unlink()
    return rows


def _shared_rows(
    name: str, path: Path, host0: str, wrote: str, peers: list[dict[str, str]], marker: Path, severity: str
) -> list[dict[str, str]]:
    hint = HINTS.get(name, "")
    if wrote != "ok":
        return [check(name, host0, "fail", f"{host0} cannot write {path}: {wrote}", hint)]
    if not peers:
        return [check(name, host0, "pass", f"{path}: one node only, nothing to compare")]
    rows = []
    for r in peers:
        problems = peer_problems(r, host0, marker)
        where = f"{r['path']}" + (f" (here; {path} on {host0})" if r["path"] != str(path) else "")
        if not problems:
            rows.append(check(name, r["host"], "pass", f"{where}: write, read, rename and lock agree with {host0}"))
            continue
        more = f"; also failed: {', '.join(step for step, _ in problems[1:])}" if len(problems) > 1 else ""
        rows.append(check(name, r["host"], severity, f"{where}: {problems[0][1]}{more}", hint))
    return rows


def peer_problems(r: dict[str, str], host0: str, marker: Path) -> list[tuple[str, str]]:
    """(step, what went wrong) for one peer's results, first failure first."""
    problems = []
    if r["read"] != "ok":
        problems.append(("read", f"cannot read the marker {host0} wrote ({r['read']})"))
    if r["rename"] != "ok":
        problems.append(("rename", f"cannot write and rename a file ({r['rename']})"))
    elif _attempt(lambda: _read_expect(Path(f"{marker}-{r['host']}"), r["host"])) != "ok":
        problems.append(("rename", f"{host0} does not see the file {r['host']} renamed into place"))
    if r["lock_held"] != "held":
        problems.append(("lock", f"does not see {host0}'s flock ({r['lock_held']}; locks are not shared)"))
    if r["lock_free"] != "free":
        problems.append(("unlock", f"cannot take the lock after {host0} let go ({r['lock_free']})"))
    return problems


def mount_of(path: str, mounts: str) -> tuple[str, str]:
    """(mount point, fs type) holding ``path``, from the text of ``/proc/mounts``; pure."""
    best = ("/", "unknown")
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def is_network_fs(fstype: str) -> bool:
    """True for filesystems served over the network (never node-local NVMe)."""
    return fstype in NETWORK_FS or fstype.startswith("fuse.")


def nvme_checks(probe: Any, template: str | None, enabled: bool, need_gb: float) -> list[dict[str, str]]:
    """Rows for the NVMe offload path: node-local, room, async_io (rank 0; [] elsewhere)."""
    if not template:
        return [check("NVMe path", "all", "skip", "no NVMe offload in the config (train.offload.nvme_path)")]
    if not enabled:
        why = f"{template}: not checked; pass --check-nvme (builds DeepSpeed's async_io op: minutes)"
        return [check("NVMe path", "all", "skip", why)]
    path = Path(os.path.expandvars(template.replace("{node}", probe.host)))
    marker = path / f".hpcft-doctor-{probe.job}-nvme"
    if probe.rank == 0:
        _attempt(lambda: (path.mkdir(parents=True, exist_ok=True), _write(marker, probe.host)))
    probe.barrier()
    facts = _nvme_facts(path, marker, need_gb) if probe.leader else None
    if facts and probe.rank != 0:
        facts["sees_node0"] = marker.exists()
    results = [r for r in probe.gather(facts) if r]
    if probe.rank != 0:
        return []
    with contextlib.suppress(OSError):
        marker.unlink()
    return [row for r in results for row in _nvme_rows(r, need_gb)]


def _nvme_facts(path: Path, marker: Path, need_gb: float) -> dict[str, Any]:
    """This node's view of its NVMe path: writable, fs type, free space, async_io."""
    host = node_name(os.environ)
    probe_file = path / f".hpcft-doctor-write-{host}"
    writable = _attempt(
        lambda: (path.mkdir(parents=True, exist_ok=True), _write(probe_file, "x" * 4096), probe_file.unlink())
    )
    with open("/proc/mounts") as f:
        point, fstype = mount_of(str(path.resolve()), f.read())
    free = shutil.disk_usage(path).free if path.is_dir() else 0
    return {
        "host": host,
        "path": str(path),
        "writable": writable,
        "mount": point,
        "fstype": fstype,
        "free_gb": free / 1024**3,
        "async_io": _build_async_io(),
        "sees_node0": False,
    }


def _build_async_io() -> str:
    """``ok`` when DeepSpeed's async_io op is compatible and builds (JIT) here, else why not."""
    try:
        from deepspeed.accelerator import get_accelerator

        builder = get_accelerator().create_op_builder("AsyncIOBuilder")
        if builder is None or not builder.is_compatible(verbose=False):
            return "not compatible here (libaio-dev missing?)"
        builder.load(verbose=False)
    except Exception as e:  # an op build fails in many ways (compiler, headers, ninja)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return "ok"


def _nvme_rows(r: dict[str, Any], need_gb: float) -> list[dict[str, str]]:
    host, where = r["host"], f"{r['path']} ({r['fstype']} on {r['mount']})"
    local_problem = ""
    if r["writable"] != "ok":
        local_problem = f"not writable: {r['writable']}"
    elif is_network_fs(r["fstype"]):
        local_problem = "a network filesystem, not node-local NVMe"
    elif r["sees_node0"]:
        local_problem = "shared with node 0 (it sees node 0's file), not node-local"
    rows = [
        check(
            "NVMe local",
            host,
            "fail" if local_problem else "pass",
            f"{where}: {local_problem or 'local'}",
            "point train.offload.nvme_path at a node-local NVMe mount" if local_problem else "",
        )
    ]
    room = r["free_gb"] >= need_gb
    rows.append(
        check(
            "NVMe room",
            host,
            "pass" if room else "fail",
            f"{r['free_gb']:.1f} GiB free, "
            + (f"{need_gb:.1f} GiB needed (planner estimate)" if need_gb else "need unknown (no train.model)"),
            "" if room else "free space or use more nodes (the offload is split across nodes)",
        )
    )
    ok = r["async_io"] == "ok"
    rows.append(
        check(
            "async_io build",
            host,
            "pass" if ok else "fail",
            r["async_io"],
            "" if ok else "apt-get install libaio-dev (and a compiler) on every node",
        )
    )
    return rows
