"""``hpcft bench scale``'s arithmetic: points from metrics records, speed-up and efficiency, its CLI checks."""

from __future__ import annotations

import pytest

from hpcft.errors import RunError
from hpcft.ops import scale
from tests.conftest import hpcft, import_or_require


def records(world: int, machines: int, rates: list[float], step_s: float) -> list[dict]:
    begin = {"event": "train_begin", "max_steps": len(rates), "start_step": 0, "world_size": world,
             "machines": machines, "time": 0.0}  # fmt: skip
    steps = [{"step": i + 1, "loss": 2.0, "tokens_per_s": r, "time": 10.0 + step_s * i} for i, r in enumerate(rates)]
    return [begin, *steps, {"step": len(rates), "eval_loss": 1.0, "time": 99.0}]


def test_point_skips_warmup_and_takes_medians():
    # Steps 1-2 are warm-up (slow); the rest: rates 1000, 1200, 1100, 900 → median 1050; 0.5 s apart.
    p = scale.scale_point("r", 1, records(8, 1, [10, 20, 1000, 1200, 1100, 900], 0.5), warmup=2)
    assert (p.tokens_per_s, p.step_s, p.steps_measured, p.world_size) == (1050, 0.5, 4, 8)


def test_rows_relate_every_size_to_the_smallest():
    one = scale.scale_point("a", 1, records(8, 1, [1000.0] * 6, 1.0), warmup=1)
    two = scale.scale_point("b", 2, records(16, 2, [1900.0] * 6, 1.25), warmup=1)
    four = scale.scale_point("c", 4, records(32, 4, [3000.0] * 6, 2.0), warmup=1)
    rows = scale.scale_rows([four, one, two])
    assert [r["nodes"] for r in rows] == [1, 2, 4]
    assert [r["speedup"] for r in rows] == [1.0, 1.9, 3.0]
    assert [r["efficiency"] for r in rows] == [1.0, 0.95, 0.75]
    assert [r["per_gpu_tokens_per_s"] for r in rows] == [125.0, 118.8, 93.8]
    # Same work per rank at every size: 1.0 s of a step is compute; the rest waited on the others.
    assert [(r["exposed_comm_s"], r["exposed_comm_share"]) for r in rows] == [(0.0, 0.0), (0.25, 0.2), (1.0, 0.5)]
    assert {r["compared_with"] for r in rows} == {"a"}
    assert scale.one_machine_sizes([one, two, four]) == []
    lab = scale.scale_point("d", 2, records(4, 1, [5.0] * 4, 1.0), warmup=0)
    assert scale.one_machine_sizes([one, lab]) == [2]


def test_too_few_steps_or_no_training_is_a_clear_error():
    with pytest.raises(RunError, match="only 1 step"):
        scale.scale_point("r", 1, records(2, 1, [1.0, 2.0, 3.0], 1.0), warmup=2)
    with pytest.raises(RunError, match="no training"):
        scale.scale_point("r", 1, [], warmup=0)


def test_report_files(tmp_path):
    rows = scale.scale_rows([scale.scale_point("a", 1, records(2, 1, [4.0] * 4, 1.0), 0),
                             scale.scale_point("b", 2, records(4, 1, [6.0] * 4, 1.0), 0)])  # fmt: skip
    written = scale.write_report(rows, ["a note"], tmp_path / "out")
    assert written[0].name == "scale.json" and '"speedup": 1.5' in written[0].read_text()
    image = import_or_require("matplotlib.image")  # the [plot] extra: the PNG is required under CI=true
    assert written == [tmp_path / "out" / "scale.json", tmp_path / "out" / "scale.png"]
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.imread(written[1]).shape == (400, 1000, 4)  # a 10 x 4 inch figure at 100 dpi, RGBA


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "2"], "at least two"),
        (["--nodes", "1,x"], "commas"),
        (["--nodes", "0,2"], "at least two"),
        (["--nodes", "1,2", "--steps", "5", "--warmup", "4"], "fewer than 2"),
    ],
)
def test_bad_sizes_are_refused_before_anything_is_planned(tmp_path, args, message):
    out = hpcft("bench", "scale", str(tmp_path / "missing.yaml"), *args, check=False)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
