"""tokens/s without a collective: the collator's CPU count of rank 0's training batches × the world size."""

from __future__ import annotations

from types import SimpleNamespace

from hpcft.train.data.collate import SFTCollator
from hpcft.train.metrics import TrainTokens


def rows(*lengths: int) -> list[dict]:
    return [{"input_ids": [5] * n, "labels": [5] * n, "position_ids": list(range(n))} for n in lengths]


def test_training_batches_count_and_evaluation_batches_do_not():
    collator = SFTCollator(pad_id=0, packing=False)
    collator(rows(3))  # built before training began (e.g. a sanity batch): not counted
    tokens = TrainTokens(collator)
    args, state = SimpleNamespace(world_size=4), SimpleNamespace(num_input_tokens_seen=0)
    collator(rows(5, 2))  # step 1, two rows padded to 5: 7 real tokens
    tokens.step_ended()
    collator(rows(4))  # an evaluation after step 1
    tokens.evaluated()
    collator(rows(6))  # step 2
    tokens.step_ended()
    assert tokens.seen(args, state) == (7 + 6) * 4


def test_without_a_counter_the_trainers_own_count():
    assert TrainTokens(None).seen(SimpleNamespace(world_size=4), SimpleNamespace(num_input_tokens_seen=99)) == 99
