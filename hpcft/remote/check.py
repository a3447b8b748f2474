"""Is a cluster usable from here: reachable, an hpcft there that reads this one's job files, sbatch present."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hpcft import __version__
from hpcft.errors import HpcftError
from hpcft.remote import ssh
from hpcft.remote.clusters import ENV_VAR, Cluster
from hpcft.spec.io import SPEC_FORMAT


@dataclass(frozen=True)
class Checked:
    """What ``check`` found; ``problem`` is None when the cluster can take jobs from here."""

    version: str | None = None
    spec_format: int | None = None
    sbatch: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def version_text(self) -> str:
        if self.version is None:
            return f"[red]{self.problem}[/red]"
        same = "" if self.version == __version__ else f" (here {__version__})"
        return f"{self.version}{same}" + (f" [red]{self.problem}[/red]" if self.problem and self.sbatch else "")

    @property
    def sbatch_text(self) -> str:
        return self.sbatch or ("[red]not found[/red]" if self.version else "-")


def compatible(cluster: Cluster, info: dict) -> str | None:
    """Why the cluster's hpcft cannot take this one's jobs (None: it can)."""
    theirs = info.get("spec_format")
    if not isinstance(theirs, int) or theirs < SPEC_FORMAT:
        return (f"the hpcft on {cluster.name} ({info.get('version', '?')}) reads job files of format {theirs}, this "
                f"one writes format {SPEC_FORMAT}: upgrade it there, e.g. `ssh {cluster.host} "
                f"{cluster.hpcft.rsplit('/', 1)[0] + '/pip' if '/' in cluster.hpcft else 'pip'} install -U "
                f"'hpcft=={__version__}'`")  # fmt: skip
    if not info.get("sbatch"):
        return f"no sbatch on {cluster.name}'s PATH (HINT: `env: {{PATH: ...}}` of the cluster, or a login node)"
    return None


def info(cluster: Cluster) -> dict:
    """The cluster's ``hpcft remote-info``; ``HpcftError`` when it cannot be run there."""
    proc = ssh.run(cluster, [cluster.hpcft, "remote-info"], env={ENV_VAR: "local"}, timeout=120)
    out = proc.stdout.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(out[-1]) if proc.returncode == 0 and out else {}
    except ValueError:
        pass
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    raise HpcftError(f"{cluster.hpcft} does not run on {cluster.name}: {err[-1] if err else 'no answer'}",
                     hint=f"install hpcft there, or set the cluster's hpcft path: hpcft clusters add {cluster.name} "
                          "--hpcft /path/to/bin/hpcft --replace ...")  # fmt: skip


def require(cluster: Cluster) -> dict:
    """``info``, or the ``HpcftError`` saying why this cluster cannot take jobs from here."""
    found = info(cluster)
    problem = compatible(cluster, found)
    if problem:
        raise HpcftError(problem)
    return found


def check(cluster: Cluster) -> Checked:
    """``info`` as a row of ``hpcft clusters``; never raises for the cluster's own problems."""
    try:
        found = info(cluster)
    except HpcftError as e:
        return Checked(problem=e.message.splitlines()[0])
    return Checked(version=found.get("version"), spec_format=found.get("spec_format"), sbatch=found.get("sbatch"),
                   problem=compatible(cluster, found))  # fmt: skip
