"""The condition of a next-scale model: token sequences (a caption's text tokens; a class is a
sequence of one token) padded to a fixed length with a validity mask, and the per-example
Grain transform of the trainer (pre-tokenized records -> fixed-shape arrays)."""

import numpy as np


def pad_conditions(sequences, length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, length], mask bool [B, length]) from B token sequences; a sequence
    longer than `length` is a ValueError (a cut caption would be a different condition)."""
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, np.int32).reshape(-1)
        if len(seq) > length:
            raise ValueError(
                f"condition {i} holds {len(seq)} tokens, more than the model's condition length "
                f"{length} (condition.max_length when it was trained)"
            )
        ids[i, : len(seq)], mask[i, : len(seq)] = seq, True
    return ids, mask


class NextScaleExample:
    """Grain transform: a pre-tokenized record {tokens_name: int32 [N], condition_name: int32
    [n]} -> {"tokens": [N], "cond": [length], "cond_mask": [length]}."""

    def __init__(self, tokens_name: str, condition_name: str, length: int, pad_id: int = 0):
        self.tokens_name, self.condition_name = tokens_name, condition_name
        self.length, self.pad_id = int(length), int(pad_id)

    def __call__(self, example: dict, rng=None) -> dict:
        del rng  # deterministic; condition dropout is drawn in the train step
        ids, mask = pad_conditions([example[self.condition_name]], self.length, self.pad_id)
        tokens = np.asarray(example[self.tokens_name], np.int32).reshape(-1)
        return {"tokens": tokens, "cond": ids[0], "cond_mask": mask[0]}
