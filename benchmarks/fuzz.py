"""Long fuzzing run: the properties of ``tests/fuzzing.py`` over many cases, every failure counted.

    .venv/bin/python benchmarks/fuzz.py --cases 100000      # ~1.5 h on one core

Unlike the CI test (a fixed sample, stops at the first failure), this draws fresh random cases, keeps
going after a failure and prints each distinct one (its last line, how often, one traceback), then
one JSON line and one markdown row for ``benchmarks/RESULTS.md``. The cases are split between job
files (+ ``-o`` overrides, flags, a user command) and damaged run directories (every reading command).
Exit status 1 if any property failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzzing as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000, help="total cases (split by --job-share)")
    ap.add_argument("--job-share", type=float, default=0.35, help="fraction of cases that are job files")
    args = ap.parse_args()
    failures: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    counts = collections.Counter()

    def record(kind: str, e: AssertionError) -> None:
        lines = [line for line in str(e).splitlines() if line.strip()]
        key = f"{kind}: {lines[-1][:160] if lines else type(e).__name__}"
        failures[key] += 1
        example.setdefault(key, str(e)[-4000:])

    def run_settings(n: int) -> settings:
        return settings(max_examples=max(n, 1), deadline=None, database=None, suppress_health_check=list(HealthCheck))

    root = Path(tempfile.mkdtemp(prefix="hpcft-fuzz-"))
    work = F.make_workdir(root / "jobs")
    damaged, healthy = F.make_run(F.make_workdir(root / "a")), F.make_run(F.make_workdir(root / "b"), "healthy")
    n_job = int(args.cases * args.job_share)
    t0 = time.time()

    @run_settings(n_job)
    @given(F.job_texts(), st.lists(F.override, max_size=2), F.flag_args, st.lists(F.hostile_text, max_size=2),
           st.booleans())  # fmt: skip
    def jobs(text, overrides, flags, command, also_plan):
        counts["job"] += 1
        try:
            out = F.check_job(work, text, overrides, flags, command, also_plan)
            counts["job accepted" if out.exit_code == 0 else "job rejected"] += 1
        except AssertionError as e:
            record("job", e)
        progress()

    @run_settings(args.cases - n_job)
    @given(st.lists(F.damages(), min_size=1, max_size=3), st.sampled_from(F.OPS))
    def runs(damage_list, op):
        counts["run dir"] += 1
        try:
            F.check_damaged(damaged, healthy, root / "work", damage_list, list(op))
        except AssertionError as e:
            record("run dir", e)
        progress()

    def progress() -> None:
        done = counts["job"] + counts["run dir"]
        if done % 1000 == 0:
            rate = done / (time.time() - t0)
            print(f"  {done}/{args.cases} cases, {sum(failures.values())} failing, {rate:.0f}/s", file=sys.stderr)

    jobs()
    runs()
    elapsed = time.time() - t0
    for key, n in failures.most_common():
        print(f"\n{n}× {key}\n{example[key]}")
    total = counts["job"] + counts["run dir"]
    result = {"bench": "fuzz", "cases": total, "failures": sum(failures.values()), "distinct": len(failures),
              "job_files": counts["job"], "accepted": counts["job accepted"], "run_dirs": counts["run dir"],
              "seconds": round(elapsed)}  # fmt: skip
    print(json.dumps(result))
    print(
        f"| fuzz | {result['failures']} failing of {total} cases (0) | {counts['job']} job files "
        f"({counts['job accepted']} accepted), {counts['run dir']} damaged run dirs; {elapsed / 60:.0f} min |"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
