"""The GPU check: every GPU path of hpcft on one GPU, as a user runs it, in one table (run by gpu_check.sh).

Cases, each through ``hpcft submit --backend local --wait`` on a Llama-architecture model built here from
a config (~0.45 B parameters; ``--cpu-smoke``: 8 M) with the demo's locally trained tokenizer and data:

    sft        bf16 full fine-tuning, packed rows (the GPU attention kernels: sdpa)
    zero3-nvme ZeRO-3, parameters and optimizer state offloaded to NVMe (async_io); swap files counted
    lora       LoRA r=16, all linear layers, bf16
    qlora      LoRA on a 4-bit NF4 base (bitsandbytes)                      needs CUDA
    fsdp       FSDP through ``accelerate launch`` (FSDP2, full shard)       needs CUDA
    plain      a hand-written HF Trainer on the same model, batches and arguments, without hpcft's
               per-step additions (preemption agreement, metrics, commit callback): sft ÷ plain is what they cost

Per case: step time and tokens/s (medians after the warm-up steps), MFU = 6 × parameters × tokens/s ÷ the
GPU's dense bf16 peak (``--peak-tflops``, else known from the device name), peak GPU memory. A case that
fails is a row saying so; the script exits 1 when any ran and failed.

    python benchmarks/gpu_check.py --out DIR [--cpu-smoke] [--steps 30] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PEAKS_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
FSDP_YAML = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 1
mixed_precision: bf16
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_reshard_after_forward: true
"""


def build(work: Path, smoke: bool) -> tuple[Path, int]:
    """The demo's tokenizer and data, a larger dataset, and the model; returns (job file, parameters)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hpcft.train.demo import build_demo, make_samples

    job = build_demo(work / "demo")
    rows = make_samples(2000 if smoke else 20000, seed=5)
    (work / "demo" / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = AutoTokenizer.from_pretrained(work / "demo" / "model")
    size = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2) if smoke else dict(hidden_size=1536, intermediate_size=4096,
                num_hidden_layers=16, num_attention_heads=12, num_key_value_heads=4)  # fmt: skip
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **size)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(work / "demo" / "model")
    return job, sum(p.numel() for p in model.parameters())


def cases(work: Path, smoke: bool, steps: int) -> dict[str, list[str]]:
    """``hpcft submit`` arguments of each case (after the job file)."""
    seq, batch = (128, 4) if smoke else (1024, 8)
    common = ["--backend", "local", "--gpus-per-node", "1", "-o", f"train.max_steps={steps}", "-o",
              f"train.save_steps={steps + 1}", "-o", "train.eval_steps=null", "-o", f"train.seq_len={seq}",
              "-o", f"train.batch_size={batch}", "-o", "train.packing=true", "-o", "train.precision=bf16",
              "-o", "train.lr=1e-4", "--runs-dir", str(work / "runs")]  # fmt: skip
    lora = ["-o", "train.lora.enabled=true"]
    (work / "fsdp.yaml").write_text(FSDP_YAML)
    (work / "nvme").mkdir(exist_ok=True)  # stands for the node-local NVMe mount, which hpcft requires to exist
    return {
        "sft": ["-o", "run.name=sft", *common],
        "zero3-nvme": ["-o", "run.name=zero3-nvme", *common, "--zero", "3", "--offload", "nvme", "-o",
                       f"train.offload.nvme_path={work / 'nvme'}", "-o", f"train.max_steps={max(steps // 3, 6)}"],
        "lora": ["-o", "run.name=lora", *common, *lora],
        "qlora": ["-o", "run.name=qlora", *common, *lora, "-o", "train.lora.load_in_4bit=true"],
        "fsdp": ["-o", "run.name=fsdp", *common, "--launcher", "accelerate", "--accelerate-config",
                 str(work / "fsdp.yaml")],
    }  # fmt: skip


def measure(metrics: list[dict], warmup: int) -> tuple[float | None, float | None]:
    """(median step seconds, median tokens/s) of the step records after ``warmup`` steps."""
    steps = [m for m in metrics if "loss" in m and m.get("step", 0) > warmup]
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(steps) if b["step"] == a["step"] + 1]
    rates = [m["tokens_per_s"] for m in steps if m.get("tokens_per_s")]
    return (statistics.median(gaps) if gaps else None), (statistics.median(rates) if rates else None)


def run_case(name: str, job: Path, args: list[str], work: Path, warmup: int) -> dict:
    """Submit one case and wait; its row."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "hpcft", "submit", str(job), *args, "--wait"], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    row: dict = {"case": name, "wall_s": round(time.time() - t0, 1)}
    runs = sorted((work / "runs").glob(f"{name}-*/metrics.jsonl"))
    if proc.returncode != 0 or not runs:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        logs = sorted((work / "runs").glob(f"{name}-*/logs/*"))
        row.update(status="FAILED", detail=" | ".join(tail), logs=[str(p) for p in logs])
        return row
    metrics = [json.loads(x) for x in runs[-1].read_text().splitlines() if x.strip()]
    row["step_s"], row["tokens_per_s"] = measure(metrics, warmup)
    row["status"] = "ok"
    memory = [line for p in runs[-1].parent.glob("logs/*") for line in p.read_text(errors="replace").splitlines()
              if "peak GPU memory" in line]  # fmt: skip
    row["detail"] = memory[-1].split("peak GPU memory", 1)[1].strip(": ") if memory else ""
    return row


PLAIN = r"""
import json, sys, time, statistics
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments
from hpcft.rundir import store
from hpcft.train import data

run, out, warmup = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
spec = store.load_run_spec(run)            # the sft case's spec and its cached, packed dataset: the same batches
t = spec.train
tokenizer = AutoTokenizer.from_pretrained(t.model)
train_ds, _ = data.build_datasets(spec, run, tokenizer)
model = AutoModelForCausalLM.from_pretrained(t.model, dtype=torch.float32)
times = []

class Clock(TrainerCallback):              # time.time() only: no device work
    def on_step_end(self, args, state, control, **kw):
        times.append((state.global_step, time.time()))

args = TrainingArguments(output_dir=out, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
                         learning_rate=t.lr, bf16=True, logging_steps=t.logging_steps, save_strategy="no",
                         report_to="none", seed=t.seed, use_cpu=not torch.cuda.is_available(),
                         dataloader_num_workers=0)
Trainer(model=model, args=args, train_dataset=train_ds, data_collator=data.make_collator(tokenizer, t.packing),
        callbacks=[Clock()]).train()
gaps = [b[1] - a[1] for a, b in zip(times, times[1:]) if a[0] >= warmup]
tokens = t.batch_size * t.seq_len
step = statistics.median(gaps)
print(json.dumps({"step_s": step, "tokens_per_s": tokens / step}))
"""


def run_plain(work: Path, warmup: int) -> dict:
    """The hand-written Trainer on the sft case's data and arguments."""
    sft = sorted((work / "runs").glob("sft-*/spec.yaml"))
    if not sft:
        return {"case": "plain", "status": "FAILED", "detail": "needs the sft case's run"}
    script = work / "plain_trainer.py"
    script.write_text(PLAIN)
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(script), str(sft[-1].parent), str(work / "plain-out"), str(warmup)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    row: dict = {"case": "plain", "wall_s": round(time.time() - t0, 1)}
    if proc.returncode != 0:
        return {**row, "status": "FAILED", "detail": " | ".join((proc.stdout + proc.stderr).splitlines()[-3:])}
    return {**row, "status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1]), "detail": "no hpcft callbacks"}


def peak_flops(given: float | None) -> tuple[float | None, str]:
    """(dense bf16 FLOP/s of the GPU, its name)."""
    import torch

    if not torch.cuda.is_available():
        return None, "CPU (no CUDA)"
    name = torch.cuda.get_device_name(0)
    if given:
        return given * 1e12, name
    return next((tf * 1e12 for key, tf in PEAKS_TFLOPS.items() if key in name), None), name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cpu-smoke", action="store_true", help="8 M parameters, a few steps; CUDA-only cases skip")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per case (default 30; smoke 6)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    opts = parser.parse_args()
    import torch

    steps = opts.steps or (6 if opts.cpu_smoke else 30)
    warmup = 2 if opts.cpu_smoke else 5
    if not opts.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; on a CPU-only machine run it with --cpu-smoke", file=sys.stderr)
        return 2
    opts.out.mkdir(parents=True, exist_ok=True)
    job, params = build(opts.out, opts.cpu_smoke)
    peak, device = peak_flops(opts.peak_tflops)
    rows = []
    for name, args in cases(opts.out, opts.cpu_smoke, steps).items():
        if name in ("qlora", "fsdp") and not torch.cuda.is_available():
            rows.append({"case": name, "status": "skipped", "detail": "needs CUDA"})
        else:
            rows.append(run_case(name, job, args, opts.out, warmup))
        if name == "zero3-nvme" and rows[-1]["status"] == "ok":
            swaps = list((opts.out / "nvme").rglob("*.swp"))
            rows[-1]["detail"] = f"{len(swaps)} swap files, {sum(p.stat().st_size for p in swaps) / 2**20:.0f} MiB"
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    rows.append(run_plain(opts.out, warmup))
    for r in rows:
        r["mfu"] = 6 * params * r["tokens_per_s"] / peak if peak and r.get("tokens_per_s") else None
    sft, plain = (next((r for r in rows if r["case"] == c and r.get("step_s")), None) for c in ("sft", "plain"))
    overhead = sft["step_s"] / plain["step_s"] if sft and plain else None
    report = {"device": device, "parameters": params, "steps": steps, "smoke": opts.cpu_smoke, "rows": rows,
              "hpcft_over_plain_step_time": overhead}  # fmt: skip
    (opts.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check on {device}: {params / 1e6:.0f} M parameters, {steps} steps per case, torch {torch.__version__}")
    print("| case | status | step s | tokens/s | MFU | wall s | detail |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r['step_s']:.3f}" if r.get("step_s") else "-", f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s")
                 else "-", f"{r['mfu']:.1%}" if r.get("mfu") else "-", str(r.get("wall_s", "-"))]  # fmt: skip
        print(f"| {r['case']} | {r['status']} | {' | '.join(cells)} | {r.get('detail', '')} |")
    if overhead:
        print(f"hpcft's trainer ÷ the hand-written Trainer, step time: {overhead:.3f}")
    return 1 if any(r["status"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
