"""Secrets in a job: what looks like one, and where it may not be written; pure.

A secret reaches the ranks only by name (``launch.env_passthrough``): its value stays in the
submitting shell's environment and each launcher passes it on without writing it anywhere (sbatch
and srun export the environment; pdsh by ``ssh -o SendEnv``; mpirun by ``-x NAME``). Everything
else in a job (``launch.env``, ``launch.setup``, ``resources.extra_sbatch``, the command's
arguments) is written into ``spec.yaml`` and ``job.sbatch`` and shown by ``hpcft plan``, so a value
that looks like a token there is refused. The error never repeats the value.
"""

from __future__ import annotations

import re

from hpcft.spec.model import JobSpec

# Names of variables that hold secrets: a word of the name (split at _) is one of these.
SECRET_NAME_RE = re.compile(
    r"(^|_)(?<!PAD_)(?<!EOS_)(?<!BOS_)(?<!UNK_)(?<!SEP_)(?<!CLS_)(?<!MASK_)"  # a tokenizer's special tokens
    r"(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIALS?)($|_)",
    re.I,
)
# Values that are tokens by their form: issuers' documented prefixes, private keys, JWTs.
_TOKEN_VALUE_RE = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI-style API keys
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"  # GitHub
    r"|\bglpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\."  # a JWT
)
# `NAME=value` or `--name=value` with a secret's name and a literal value (not a $REFERENCE); the value
# is only looked at, not consumed, so `--comment=HF_TOKEN=x` finds both names.
_ASSIGNMENT_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)\s*[=:]\s*['\"]?(?=[^\s'\"$])")
# Variables DeepSpeed's runner copies onto the pdsh/mpirun command line (runner.py EXPORT_ENVS and the
# CUDA accelerator's NCCL), which it logs whole: a secret under such a name would land in the job output.
DEEPSPEED_EXPORTED_PREFIXES = ("MLFLOW", "PYTHON", "MV2", "UCX", "NCCL")
_HINT = "export it in your shell and name it in launch.env_passthrough; its value is then never written"


def looks_like_secret(text: str) -> str | None:
    """What in ``text`` looks like a secret (a description, never the value), or None."""
    if _TOKEN_VALUE_RE.search(text):
        return "a token"
    for name in _ASSIGNMENT_RE.findall(text):
        if SECRET_NAME_RE.search(name.replace("-", "_")):
            return f"a value for {name}"
    return None


def secret_problems(spec: JobSpec) -> list[str]:
    """Secrets written where they would be stored in files, and secrets a launcher would print."""
    launch, problems = spec.launch, []
    places = [
        *((f"launch.setup[{i}]", line) for i, line in enumerate(launch.setup)),
        *((f"resources.extra_sbatch[{i}]", opt) for i, opt in enumerate(spec.resources.extra_sbatch)),
        *((f"launch.command[{i}]", arg) for i, arg in enumerate(launch.command)),
        *((f"launch.env.{name}", value) for name, value in launch.env.items()),
    ]
    for where, text in places:
        what = looks_like_secret(text)
        if what:
            problems.append(f"{where}: holds what looks like {what}, which would be written into spec.yaml and "
                            f"job.sbatch (HINT: {_HINT})")  # fmt: skip
    for name in launch.env:
        if SECRET_NAME_RE.search(name):
            problems.append(
                f"launch.env.{name}: looks like a secret; secrets are never written into run files "
                f"(HINT: export {name} before submitting and list it in launch.env_passthrough)"
            )
    if launch.launcher in ("deepspeed-pdsh", "deepspeed-openmpi", "deepspeed-mvapich"):
        for name in launch.env_passthrough:
            if name.startswith(DEEPSPEED_EXPORTED_PREFIXES):
                problems.append(
                    f"launch.env_passthrough: {name}: DeepSpeed's runner copies variables named "
                    f"{'*, '.join(DEEPSPEED_EXPORTED_PREFIXES)}* onto the {launch.launcher} command line and "
                    "logs it: this secret would land in the job output (HINT: --launcher deepspeed or torchrun, "
                    "where the ranks inherit it)"
                )
    return problems
