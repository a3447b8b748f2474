"""HF ``TrainingArguments`` from the resolved spec; the one place that maps spec → Trainer settings."""

from __future__ import annotations

from hpcft.spec import JobSpec


def training_arguments(spec: JobSpec, output_dir: str):
    """HF ``TrainingArguments`` from the spec (CPU: gloo; GPU: the default NCCL)."""
    import torch
    from transformers import TrainingArguments

    t = spec.train
    cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if (t.eval_steps and t.data.eval) else "no",
        eval_steps=t.eval_steps,
        logging_steps=t.logging_steps,
        seed=t.seed,
        use_cpu=cpu,
        ddp_backend="gloo" if cpu else None,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        log_level="info",
        log_level_replica="warning",
        log_on_each_node=False,
        dataloader_num_workers=0,
    )
