"""Exact resume of DeepSpeed ZeRO-3 checkpoints with NVMe offload (DeepSpeed 0.19.8); one patch, here.

Upstream (not CPU-specific): DeepSpeed's NVMe checkpoint support (deepspeedai/DeepSpeed#4707, after
#4416 and #2082) copies the swapped optimizer tensors on save but, on load, skips this rank's
optimizer-state file and never tells the fresh optimizer's swapper about the copied moments. A
resumed run then continues with Adam restarted (moments 0, step 0), the in-RAM sub-groups under the
1 MiB swap minimum not restored, and the first step at the initial learning rate: measured here,
losses off by up to 0.51 within 10 steps. With parameters on NVMe beyond ``max_in_cpu`` the load
crashes instead (``'NoneType' object has no attribute 'data'`` in ``_rigid_load_state_dict``).
``patch_deepspeed_nvme_resume`` restores all of it; with it, resumed losses equal an uninterrupted
run bit for bit (tests/train/test_nvme_resume.py). It touches private DeepSpeed internals and so
refuses any other DeepSpeed version than the one it was verified with.
"""

from __future__ import annotations

import os

VERIFIED_DEEPSPEED = "0.19.8"


def patch_deepspeed_nvme_resume() -> None:
    """Make ZeRO-3 checkpoints with NVMe offload resume exactly (idempotent; DeepSpeed 0.19.8).

    1. ``offload_optimizer.device: nvme``: ``DeepSpeedEngine.load_checkpoint`` never reads this
       rank's ``*_optim_states.pt`` (engine.py:4456 ``not self.zero_nvme_offload_optimizer()``);
       it only copies ``offloaded_tensors/rankNN`` into the swap folder (engine.py:4469-4481).
       The swapper of the fresh optimizer knows no state tensors (optimizer state is lazy), so
       ``reset_swap_buffers`` reads back only the fp32 master partition: the copied ``exp_avg*``
       files are never read, Adam's ``step`` restarts at 0, and sub-groups under the 1 MiB swap
       minimum (norm weights: fp32 + moments kept in RAM) keep their freshly loaded values.
       Fix: after the load, restore ``step`` (and every non-swapped state) from the optim_states
       file, register the swapped state tensors with the swapper so the next swap-in reads the
       copied files, and restore fp32/lp partitions of the in-RAM sub-groups.
    2. ``offload_param.device: nvme`` with sub-groups beyond ``max_in_cpu`` (no flat CPU buffer,
       ``fp16_partitioned_groups_flat[i] is None``, stage3.py:980-993): ``_rigid_load_state_dict``
       does ``fp16_param.data.copy_`` on None (stage3.py:3577-3578) -> AttributeError. Fix: write
       those partitions back with ``_reassign_or_swap_out_partitioned_parameters`` (what the step
       and ``reset_swap_buffers`` use), which swaps them out to NVMe.
    """
    import deepspeed
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    if getattr(DeepSpeedEngine.load_checkpoint, "_hpcft_nvme_resume", False):
        return
    if deepspeed.__version__ != VERIFIED_DEEPSPEED:  # private internals below: re-verify on upgrade
        from hpcft.errors import HpcftError

        raise HpcftError(
            f"resuming a ZeRO-3 NVMe-offload checkpoint needs hpcft's fix for DeepSpeed {VERIFIED_DEEPSPEED}, "
            f"this is DeepSpeed {deepspeed.__version__}: without it the optimizer state is not restored "
            "(deepspeedai/DeepSpeed#4707)",
            hint=f"pip install deepspeed=={VERIFIED_DEEPSPEED}, or offload to cpu instead of nvme",
        )
    load_checkpoint = _patched_load_checkpoint(DeepSpeedEngine.load_checkpoint)
    load_checkpoint._hpcft_nvme_resume = True
    DeepSpeedEngine.load_checkpoint = load_checkpoint
    Stage3._rigid_load_state_dict = _patched_rigid_load(Stage3._rigid_load_state_dict)


def _patched_load_checkpoint(original_load):
    """``DeepSpeedEngine.load_checkpoint`` that also restores NVMe-swapped optimizer state (fix 1)."""
    import torch
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT

    def load_checkpoint(self, load_dir, tag=None, *args, **kwargs):
        load_path, client_state = original_load(self, load_dir, tag, *args, **kwargs)
        wants_optimizer = kwargs.get("load_optimizer_states", True) and not kwargs.get("load_module_only", False)
        if load_path is not None and self.zero_nvme_offload_optimizer() and wants_optimizer:
            tag = os.path.basename(os.path.dirname(load_path))  # load_dir/tag/zero_pp_rank_R_..._model_states.pt
            saved = torch.load(self._get_zero_ckpt_name(load_dir, tag), map_location="cpu", weights_only=False)
            _restore_swapped_optimizer(self.optimizer, saved[OPTIMIZER_STATE_DICT])
        return load_path, client_state

    return load_checkpoint


def _restore_swapped_optimizer(opt, sd) -> None:
    """Restore loss scaling, param-group hyperparameters and every sub-group's state from ``sd``."""
    from deepspeed.checkpoint.constants import LOSS_SCALER, OPTIMIZER_STATE_DICT

    opt.checkpoint_event_prologue()  # release gathered params (persistent ones too)
    opt.loss_scaler, opt.dynamic_loss_scale, opt.overflow = (sd[LOSS_SCALER], sd["dynamic_loss_scale"], sd["overflow"])
    saved_state = sd[OPTIMIZER_STATE_DICT]["state"]
    # param-group hyperparameters, as torch's Optimizer.load_state_dict does: the restored LR scheduler
    # sets 'lr' only at its next step, so without this the first resumed step runs at the initial lr
    for group, saved_group in zip(opt.optimizer.param_groups, sd[OPTIMIZER_STATE_DICT]["param_groups"], strict=True):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    # optimizer.state_dict() numbers params in param_groups order; _set_fp32_optimizer_param_groups
    # appends sub-group i to param group sub_group_to_group_id[i]
    order = [
        i
        for g in range(len(opt.optimizer.param_groups))
        for i in range(len(opt.fp16_groups))
        if opt.sub_group_to_group_id[i] == g
    ]
    for index, i in enumerate(order):
        _restore_sub_group(opt, sd, i, saved_state.get(index, {}))
    opt.checkpoint_event_epilogue()  # re-gather persistent params from the restored partitions


def _restore_sub_group(opt, sd, i: int, saved: dict) -> None:
    """One sub-group: register swapped state with the swapper, or copy in-RAM state and fp32 weights."""
    import torch
    from deepspeed.checkpoint.constants import FP32_FLAT_GROUPS

    fp32 = opt.fp32_partitioned_groups_flat[i]
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in saved.items()}
    if opt._swappable_optimizer_subgroup(i):
        swapper = opt.optimizer_swapper
        info = swapper._get_param_swap_info(fp32)
        for k, v in state.items():
            if torch.is_tensor(v) and v.numel() == 0:  # swapped at save time: data is in the copied file
                state[k] = torch.empty(info.numel(), dtype=fp32.dtype, device=fp32.device)
        opt.optimizer.state[fp32] = state
        info.tensors, info.has_state_tensors = info.tensors[:1], False
        swapper._update_param_state_info(info, fp32)  # -> exp_avg-<ds_id>.tensor.swp etc.
        for context in info.tensors[1:]:
            context.release_memory()  # empty until the next swap-in reads the copied file
    else:  # state and fp32 master weights of in-RAM sub-groups: not in offloaded_tensors
        opt.optimizer.state[fp32] = state
        fp32.data.copy_(sd[FP32_FLAT_GROUPS][i].data)
        opt._reassign_or_swap_out_partitioned_parameters(i)


def _patched_rigid_load(original_rigid):
    """``Stage3._rigid_load_state_dict`` that swaps parameter partitions without a CPU buffer out (fix 2)."""
    from deepspeed.checkpoint.constants import FP32_FLAT_GROUPS, LOSS_SCALER, OPTIMIZER_STATE_DICT

    def _rigid_load_state_dict(self, state_dict, load_optimizer_states=True):
        if self.swap_optimizer or all(f is not None for f in self.fp16_partitioned_groups_flat):
            return original_rigid(self, state_dict, load_optimizer_states)
        # upstream body minus its fp32 -> fp16 loops, which assume a CPU flat buffer per sub-group
        self.loss_scaler = state_dict[LOSS_SCALER]
        self.dynamic_loss_scale = state_dict["dynamic_loss_scale"]
        self.overflow = state_dict["overflow"]
        if state_dict.get("ds_zero_partition_groups") is not None:
            raise RuntimeError("hpcft: AutoEP ZeRO-3 checkpoints are not handled by patch_deepspeed_nvme_resume")
        if load_optimizer_states:
            self._set_fp32_optimizer_param_groups()
            self.optimizer.load_state_dict(state_dict[OPTIMIZER_STATE_DICT])
            self._clear_fp32_optimizer_param_groups()
        for current, saved in zip(self.fp32_partitioned_groups_flat, state_dict[FP32_FLAT_GROUPS], strict=True):
            current.data.copy_(saved.data)
        for i, fp32 in enumerate(self.fp32_partitioned_groups_flat):
            if fp32.numel() > 0:
                self._reassign_or_swap_out_partitioned_parameters(i)  # copy + unflatten, or swap out to NVMe

    return _rigid_load_state_dict


def patch_if_nvme(trainer) -> bool:
    """Apply the patch when the Trainer's DeepSpeed config offloads anything to NVMe; True if applied."""
    hf_config = getattr(trainer.args, "hf_deepspeed_config", None)
    from hpcft.plan.deepspeed import config_offload_devices

    if "nvme" in config_offload_devices(hf_config.config if hf_config else None):
        patch_deepspeed_nvme_resume()
        return True
    return False
