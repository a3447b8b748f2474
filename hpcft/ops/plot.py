"""``hpcft plot``: train/eval loss and tokens/s against step from ``RUN/metrics.jsonl``, restarts marked,
below a timeline of where the run's time went (``hpcft.ops.goodput.timeline``: queue, start-up, training,
saves, redone work, restarts).

Decides which series a run's plot shows (``extract_series``, pure) and draws them into a PNG with
matplotlib's Agg backend (no display). matplotlib is imported only inside ``write_plot`` so the CLI
stays fast; it comes with the ``plot`` extra (``pip install hpcft[plot]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcft.errors import HpcftError, RunError


@dataclass(frozen=True)
class PlotData:
    """The series of one run, each a list of (step, value) sorted by step.

    After a restart the steps since the resumed checkpoint are logged again; the newest value of a
    step wins, so each series is what the surviving model saw.
    """

    train_loss: list[tuple[int, float]] = field(default_factory=list)
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: list[tuple[int, float]] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)  # steps at which training started again

    @property
    def empty(self) -> bool:
        """True when there is nothing to draw."""
        return not (self.train_loss or self.eval_loss or self.tokens_per_s)


def extract_series(metrics: Sequence[dict[str, Any]]) -> PlotData:
    """The plot's series from ``metrics.jsonl`` records (see ``hpcft.train.metrics``)."""
    series: dict[str, dict[int, float]] = {"loss": {}, "eval_loss": {}, "tokens_per_s": {}}
    restarts: list[int] = []
    for m in metrics:
        if m.get("event") == "train_begin":
            if (m.get("start_step") or 0) > 0:
                restarts.append(int(m["start_step"]))
            continue
        step = m.get("step")
        if not isinstance(step, int):
            continue
        for key, values in series.items():
            if isinstance(m.get(key), int | float):
                values[step] = float(m[key])

    def pairs(key: str) -> list[tuple[int, float]]:
        return sorted(series[key].items())

    return PlotData(pairs("loss"), pairs("eval_loss"), pairs("tokens_per_s"), restarts)


# The timeline's colours, by goodput bucket: training green, losses warm, waiting grey.
COLOURS = {"queue": "#bdbdbd", "startup": "#6baed6", "productive": "#31a354", "checkpoint": "#3f007d",
           "redone": "#fd8d3c", "restart": "#de2d26", "unknown": "#ffffff"}  # fmt: skip


def write_plot(data: PlotData, out: Path, title: str, spans: Sequence[tuple[str, float, float]] = ()) -> Path:
    """Draw ``data`` into the PNG ``out``: the timeline of ``spans`` (minutes since the first) on top, loss
    (train, eval) in the middle, tokens/s below; restarts as lines."""
    if data.empty:
        raise RunError(f"{title}: no training records in metrics.jsonl yet", hint="wait for the first logged step")
    try:
        import matplotlib
    except ImportError:
        raise HpcftError("hpcft plot needs matplotlib", hint='pip install "hpcft[plot]"') from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if spans:
        fig, (time_ax, loss_ax, speed_ax) = plt.subplots(3, 1, figsize=(9, 7.5), height_ratios=(0.7, 2, 1))
        speed_ax.sharex(loss_ax)
    else:
        fig, (loss_ax, speed_ax) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), height_ratios=(2, 1))
    try:
        if spans:
            _draw_timeline(time_ax, spans)
        for series, label, style in ((data.train_loss, "train loss", "-"), (data.eval_loss, "eval loss", "o-")):
            if series:
                loss_ax.plot(*zip(*series, strict=True), style, label=label, markersize=4)
        if data.tokens_per_s:
            speed_ax.plot(*zip(*data.tokens_per_s, strict=True), "-", color="tab:green", label="tokens/s")
        for i, step in enumerate(data.restarts):
            for ax in (loss_ax, speed_ax):
                ax.axvline(step, color="tab:red", linestyle="--", linewidth=1, label="restart" if i == 0 else None)
        (time_ax if spans else loss_ax).set_title(title)
        loss_ax.set(ylabel="loss")
        speed_ax.set(xlabel="step", ylabel="tokens/s")
        speed_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (loss_ax, speed_ax):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best")
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


def _draw_timeline(ax, spans: Sequence[tuple[str, float, float]]) -> None:
    """One bar of the run's time, a colour per bucket, in minutes since its first span."""
    t0 = min(start for _, start, _ in spans)
    for kind in COLOURS:
        bars = [((start - t0) / 60, (end - start) / 60) for k, start, end in spans if k == kind]
        if bars:
            ax.broken_barh(bars, (0, 1), facecolors=COLOURS[kind], label=kind)
    ax.set(yticks=[], xlabel="minutes since submission", ylim=(0, 1))
    ax.set_xlim(0, (max(end for _, _, end in spans) - t0) / 60)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.9), ncol=len(COLOURS), fontsize="small", frameon=False)
