"""The lab's state directory (keys, authorized_keys, slurm.conf) belongs to its owner.

It lives under /tmp by default, so whoever creates it first would decide who is root on the lab's
nodes: up.sh refuses a directory (or symlink) it does not own before reading anything in it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, require

UP = REPO / "scripts" / "lab" / "up.sh"


def up(lab_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURMLAB_DIR": str(lab_dir), "SLURMLAB_INSTALL": "0"}
    return subprocess.run(["bash", str(UP)], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def root_only() -> None:
    require(os.geteuid() == 0, "the lab scripts run as root")


def test_a_lab_directory_owned_by_someone_else_is_refused(tmp_path, root_only):
    lab = tmp_path / "lab"
    (lab / "var").mkdir(parents=True)
    (lab / "var" / "slurmctld.pid").write_text("1\n")  # up.sh would otherwise tear down "its" cluster
    os.chown(lab, 65534, 65534)
    proc = up(lab)
    assert proc.returncode == 1 and "refusing" in proc.stderr and "uid 65534" in proc.stderr, proc.stderr
    assert sorted(p.name for p in lab.rglob("*")) == ["slurmctld.pid", "var"]


def test_a_symlinked_lab_directory_is_refused(tmp_path, root_only):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "lab").symlink_to(tmp_path / "elsewhere")
    proc = up(tmp_path / "lab")
    assert proc.returncode == 1 and "symlink" in proc.stderr, proc.stderr


def test_the_running_lab_directory_is_its_owners():
    """Others (the login node's user, whose jobs read slurm.conf and run from slurmd's spool, as on a cluster) may
    pass through it, never list or write it; the keys and the accounting password stay the owner's alone."""
    lab = Path(os.environ.get("SLURMLAB_DIR", "/tmp/hpcft-lab"))
    require(lab.is_dir(), "the lab is up (make test brings it up)")
    assert lab.stat().st_uid == os.geteuid() and lab.stat().st_mode & 0o066 == 0
    for secret in ("ssh/id_ed25519", "login/id_ed25519", "login/hostkey", "etc/slurmdbd.conf"):
        path = lab / secret
        assert path.stat().st_mode & 0o077 == 0 and path.stat().st_uid == os.geteuid(), secret
