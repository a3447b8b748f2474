"""Rank 0's record of training: ``RUN/metrics.jsonl`` (train_begin, step/loss/lr/tokens/s, eval).

Mixture-of-experts models also log ``aux_loss``: the router load-balancing loss (unweighted) of the
training forwards since the previous record, averaged over them and over all ranks.

One JSON object per line, appended; ``hpcft plot`` reads it. ``hpcft status`` reads only the log's tail and
``metrics-events.jsonl`` (the train_begin records, one per (re)start, also appended there), so a refresh
costs the same at step 100 and step 10**6, with no extra file operation per step; for that, step records
also carry the newest ``last_eval_loss``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from hpcft.rundir import layout


def make_metrics_callback(run: Path, counter=None):
    """A TrainerCallback appending step, loss, tokens/s and elapsed time to metrics.jsonl (rank 0).

    ``counter``: hpcft's collator, which counts each batch's real tokens on the CPU; tokens/s is then rank
    0's training tokens × the world size (exact for packed rows; for unpacked rows an estimate within the
    spread of sample lengths), with no collective and no host-device synchronisation. Without one (a
    user's trainer), the Trainer's own ``num_input_tokens_seen`` (a gather per micro-batch) is used.
    """
    from transformers import TrainerCallback

    def append(record: dict) -> None:
        append_record(run, record)

    class MetricsCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.aux = RouterAuxLoss.attach(kwargs.get("model"))
            self.t0 = self.t_last = time.time()
            self.tokens = TrainTokens(counter)
            self.tokens_last = self.tokens.seen(args, state)
            evals = [e["eval_loss"] for e in state.log_history if "eval_loss" in e]  # restored on resume
            self.last_eval = evals[-1] if evals else None
            machines = count_machines()  # every rank: one collective at the start
            if state.is_world_process_zero:
                append(begin_record(args, state, machines))

        def on_step_end(self, args, state, control, **kwargs):
            self.tokens.step_ended()

        def on_evaluate(self, args, state, control, **kwargs):
            self.tokens.evaluated()

        def on_log(self, args, state, control, logs=None, **kwargs):
            aux = self.aux.take() if self.aux is not None and logs and "loss" in logs else None  # every rank
            if not state.is_world_process_zero or not logs:
                return
            now = time.time()
            record = {"step": state.global_step, "time": now, "elapsed": round(now - self.t0, 3)}
            if "loss" in logs:
                tokens = self.tokens.seen(args, state)
                dt = now - self.t_last
                record.update(
                    loss=logs["loss"],
                    lr=logs.get("learning_rate"),
                    tokens_per_s=round((tokens - self.tokens_last) / dt, 1) if dt > 0 else None,
                )
                if aux is not None:
                    record["aux_loss"] = aux
                if self.last_eval is not None:  # status finds it in the log's tail, however long ago it was
                    record["last_eval_loss"] = self.last_eval
                self.t_last, self.tokens_last = now, tokens
            elif "eval_loss" in logs:
                loss = logs["eval_loss"]
                record.update(eval_loss=loss, perplexity=math.exp(loss) if loss < 700 else None)  # exp overflows
                self.last_eval = loss
            else:
                return
            append(record)

    return MetricsCallback()


def begin_record(args, state, machines: int) -> dict:
    """The ``train_begin`` record of a (re)start, with rank 0's start-up profile (``train.startup``)."""
    from hpcft.train import startup

    startup.mark("train_begin")
    return {"event": "train_begin", "max_steps": state.max_steps, "start_step": state.global_step,
            "world_size": args.world_size, "machines": machines, "job_id": os.environ.get("HPCFT_JOB_ID", "local"),
            "restart": int(os.environ.get("HPCFT_RESTART_COUNT", "0")), "time": time.time(),
            "startup": startup.profile(warm=os.environ.get(WARM_ENV) == "1")}  # fmt: skip


WARM_ENV = "HPCFT_WARM_RANK"  # "1" in a rank hpcft.train.warm forked with the stack already imported


class TrainTokens:
    """Training tokens of all ranks so far, from the collator's CPU count of rank 0's batches × the world size.

    Batches built between the end of a step and the next step are evaluation batches when an evaluation
    ran (``evaluated``): they are left out. Without a counter, the Trainer's ``num_input_tokens_seen``.
    """

    def __init__(self, counter) -> None:
        self.counter = counter
        self.mark = counter.tokens if counter is not None else 0
        self.total = 0

    def step_ended(self) -> None:
        """Count the batches of the step that just ended."""
        if self.counter is not None:
            self.total += self.counter.tokens - self.mark
            self.mark = self.counter.tokens

    def evaluated(self) -> None:
        """Skip the batches an evaluation just built."""
        if self.counter is not None:
            self.mark = self.counter.tokens

    def seen(self, args, state) -> int:
        """Tokens of every rank so far in this (re)start."""
        return state.num_input_tokens_seen if self.counter is None else self.total * args.world_size


def count_machines() -> int:
    """How many machines the ranks run on (distinct kernel boot ids; a collective: every rank calls it).

    Nodes that are containers or network namespaces of one machine share its boot id: ``hpcft bench
    scale`` says so, since their figures then measure the tool, not the hardware.
    """
    import torch.distributed as dist

    try:
        mine = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        mine = os.uname().nodename
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return len(set(everyone))


def append_record(run: Path, record: dict) -> None:
    """One line of metrics.jsonl; a train_begin (once a (re)start) also goes to metrics-events.jsonl, with
    the offset its log line ends at (``log_end``), which places it in the log (``rundir.store.read_progress``)."""
    with open(run / layout.METRICS_FILE, "ab") as f:
        f.write((json.dumps(record) + "\n").encode())
        end = f.tell()
    if record.get("event") == "train_begin":
        with open(run / layout.METRICS_EVENTS_FILE, "ab") as f:
            f.write((json.dumps({**record, "log_end": end}) + "\n").encode())


class RouterAuxLoss:
    """Collects ``aux_loss`` from a MoE model's training forwards (a forward hook on the model)."""

    def __init__(self) -> None:
        self.total, self.count = None, 0  # a device tensor: adding to it queues work, reading it would sync

    @classmethod
    def attach(cls, model) -> RouterAuxLoss | None:
        """Hook ``model`` if it computes a router aux loss (``config.output_router_logits``); else None."""
        if model is None or not getattr(getattr(model, "config", None), "output_router_logits", False):
            return None
        collector = cls()
        model.register_forward_hook(collector.hook)
        return collector

    def hook(self, module, inputs, output) -> None:
        """Record the aux loss of a training forward (evaluation forwards are skipped)."""
        aux = getattr(output, "aux_loss", None)
        if module.training and aux is not None:
            value = aux.detach().float().reshape(1)
            self.total = value if self.total is None else self.total + value
            self.count += 1

    def take(self) -> float | None:
        """Mean since the last call over every rank (a collective: all ranks call it), then reset."""
        import torch
        import torch.distributed as dist

        device = self.total.device if self.total is not None else "cpu"
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            device = "cuda"  # NCCL reduces device tensors only
        total = self.total.double().to(device) if self.total is not None else torch.zeros(1, device=device)
        sums = torch.cat([total.double().reshape(1), torch.tensor([float(self.count)], device=device).double()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        self.total, self.count = None, 0
        sums = sums.cpu()  # once per logging step, not per forward
        return round(float(sums[0] / sums[1]), 6) if sums[1] > 0 else None
