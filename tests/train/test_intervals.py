"""The step intervals of this job survive a resume (the workaround in ``hpcft.train.checkpoint``).

Independent expectation: what transformers itself does — a TrainerState saved with ``save_steps=200`` and
loaded back (as the Trainer does when it resumes) keeps 200 whatever the arguments say; the callback makes
the job's arguments win.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.train


def test_a_resumed_state_takes_this_jobs_intervals(tmp_path, train_stack):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hpcft.train.checkpoint import make_intervals_callback

    saved = TrainerState(save_steps=200, eval_steps=100, logging_steps=5)
    saved.save_to_json(tmp_path / "trainer_state.json")
    state = TrainerState.load_from_json(tmp_path / "trainer_state.json")  # what a resume loads
    args = TrainingArguments(output_dir=str(tmp_path), save_steps=53, eval_steps=20, logging_steps=1,
                             eval_strategy="steps", report_to="none", use_cpu=True)  # fmt: skip
    assert (state.save_steps, state.eval_steps, state.logging_steps) == (200, 100, 5)  # upstream keeps these
    make_intervals_callback().on_train_begin(args, state, TrainerControl())
    assert (state.save_steps, state.eval_steps, state.logging_steps) == (53, 20, 1)
