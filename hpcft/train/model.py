"""Model and tokenizer loading: any AutoModelForCausalLM directory, as a user's real model loads."""

from __future__ import annotations

from hpcft.spec import JobSpec


def load_tokenizer(spec: JobSpec):
    """The tokenizer of ``train.tokenizer`` (default: the model directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.train.tokenizer or spec.train.model)


def load_model(spec: JobSpec):
    """The model of ``train.model``, ready for the Trainer."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(spec.train.model)
