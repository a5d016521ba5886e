"""The max_length boundary of sequence modalities: max_length counts the eos a target ends
with, so a record of max_length - 1 tokens, fully masked, takes one decoder position per row
of the modality's position table (all distinct), and a record of max_length tokens is
refused with a message naming the modality and both lengths, by masking and by the registry
built from a pre-tokenized manifest."""

import numpy as np
import pytest

from mmjax.fourm import build_registry
from mmjax.fourm.embeddings import modality_tables, position_table
from mmjax.fourm.masking.masker import FourMMasking
from mmjax.pretokenize import registry_config_from_manifest

L = 8  # the caption's max_length
SENTINELS, EOS = list(range(4, 20)), 1
REG = build_registry({
    "caption": dict(kind="sequence", vocab_size=300, max_length=L),
    "tok_rgb": dict(kind="image_tokens", vocab_size=16, grid=(2, 2)),
})  # fmt: skip
# rgb tokens in, the whole caption out: the caption is fully masked (one span).
RGB_TO_CAPTION = [{"input_alphas": {"tok_rgb": 1.0}, "target_alphas": {"caption": 1.0}}]


def _caption_targets(n: int) -> tuple[np.ndarray, ...]:
    masking = FourMMasking(REG, 4, 2 * L, RGB_TO_CAPTION, SENTINELS, EOS)
    record = np.arange(200, 200 + n)
    example = {"caption": np.pad(record, (0, 3)), "tok_rgb": np.arange(4)}
    out = masking(example, np.random.default_rng(0))
    sel = out["dec_mask"] & (out["dec_modality"] == REG.index("caption"))
    return (
        record,
        out["dec_input_tokens"][sel],
        out["dec_target_tokens"][sel],
        out["dec_positions"][sel],
    )


def test_a_record_of_max_length_minus_one_tokens_takes_every_position_once():
    record, inputs, targets, positions = _caption_targets(L - 1)
    # teacher forcing over S_0 + record + eos, one decoder position per predicted token
    np.testing.assert_array_equal(inputs, [SENTINELS[0], *record])
    np.testing.assert_array_equal(targets, [*record, EOS])
    np.testing.assert_array_equal(positions, np.arange(L))
    # the positions address distinct rows of the caption's block of the position table
    tables = modality_tables(REG)
    c = REG.index("caption")
    assert tables["num_tokens"][c] == L
    rows = position_table(REG, 16)[tables["pos_offset"][c] + positions]
    assert len({r.tobytes() for r in rows}) == L


def test_a_record_of_max_length_tokens_is_refused_with_both_lengths():
    with pytest.raises(ValueError, match=rf"'caption'.*{L} tokens.*max_length {L}.*>= {L + 1}"):
        _caption_targets(L)


def _manifest(longest: int) -> dict:
    return {
        "modalities": {
            "caption": {"kind": "sequence", "vocab_size": 300, "max_length": longest,
                        "tokenizer": "text.json"},
        }
    }  # fmt: skip


def test_registry_from_a_manifest_leaves_room_for_the_eos():
    assert registry_config_from_manifest(_manifest(12))["caption"]["max_length"] == 13
    given = registry_config_from_manifest(_manifest(12), max_lengths={"caption": 20})
    assert given["caption"]["max_length"] == 20
    with pytest.raises(ValueError, match=r"max_lengths\['caption'\] = 12.*12 tokens.*>= 13"):
        registry_config_from_manifest(_manifest(12), max_lengths={"caption": 12})
