"""Example ml-4m `mod_dict`s for the numpy 4M reference, laid out as ml-4m's masking
(fourm/data/masking.py UnifiedMasking) emits them: {domain: {"tensor", "input_mask",
"target_mask", "decoder_attention_mask"}}, True in the masks = NOT used."""

import numpy as np

from tests.ml4m_reference_config import IMAGENET_MEAN, IMAGENET_STD, ml4m_modality_info


def _image_masks(rng, b, n, n_in, n_tg):
    """Image token masks as ml-4m's UnifiedMasking.image_mask: disjoint random input / target
    positions; decoder_attention_mask holds the target count at the first target position."""
    input_mask = np.ones((b, n), bool)
    target_mask = np.ones((b, n), bool)
    dam = np.zeros((b, n), np.int64)
    for r in range(b):
        perm = rng.permutation(n)
        input_mask[r, perm[: n_in[r]]] = False
        target_mask[r, perm[n_in[r] : n_in[r] + n_tg]] = False
        if n_tg:
            dam[r, np.argmin(target_mask[r])] = n_tg
    return input_mask, target_mask, dam


def _sequence(rng, b, length, vocab, n_in, n_tg, starts):
    """A padded sequence as ml-4m's sequence_mask: inputs at [0, n_in), targets at
    [start, start + n_tg) with decoder_attention_mask 1 there, padding id 0."""
    tensor = np.zeros((b, length), np.int64)
    input_mask = np.ones((b, length), bool)
    target_mask = np.ones((b, length), bool)
    dam = np.zeros((b, length), np.int64)
    for r in range(b):
        tensor[r, : n_in[r]] = rng.integers(1, vocab, n_in[r])
        input_mask[r, : n_in[r]] = False
        if n_tg:
            s = starts[r]
            tensor[r, s : s + n_tg] = rng.integers(1, vocab, n_tg)
            target_mask[r, s : s + n_tg] = False
            dam[r, s : s + n_tg] = 1
    return tensor, input_mask, target_mask, dam


def ml4m_example_inputs(config: dict, batch_size: int, seed: int) -> dict:
    """A mod_dict over every domain of the config. Roles cycle over the domains (sorted):
    both, target only, input only (image tokens: disjoint halves; sequences: span-masking
    layout). Input counts differ per row (text is padded), target counts are equal per row so
    each domain's logits are [B, n, V]. rgb@... pixels are ImageNet-normalised."""
    rng = np.random.default_rng(seed)
    info = ml4m_modality_info(config)
    b = batch_size
    out = {}
    for i, (mod, mi) in enumerate(info.items()):
        can_in, can_out = mod in config["domains_in"], mi["decoder"] is not None
        can_out = can_out and mod in config["domains_out"]
        role = ("both", "out", "in")[i % 3]
        if not can_out:
            role = "in"
        elif not can_in or mi["encoder"] is None:
            role = "out"
        rows = np.arange(b)
        if mi["type"] == "img":
            n = mi["num_tokens"]
            n_in = (n // 3 + rows) % (n // 2) + 1 if role != "out" else np.zeros(b, int)
            n_tg = 0 if role == "in" else (n // 2 if role == "both" else n - n // 4 - i % 3)
            im, tm, dam = _image_masks(rng, b, n, n_in, n_tg)
            if mi["encoder"] == "pixels":
                s = mi["input_size"]
                img = rng.random((b, mi["num_channels"], s, s))
                mean = np.asarray(IMAGENET_MEAN)[:, None, None]
                std = np.asarray(IMAGENET_STD)[:, None, None]
                tensor = (img - mean) / std
            else:
                tensor = rng.integers(0, mi["vocab_size"], (b, *mi["grid"]))
            out[mod] = dict(
                tensor=tensor, input_mask=im, target_mask=tm, decoder_attention_mask=dam
            )
            continue
        ml = mi["max_length"]
        n_in = np.minimum(2 + 2 * rows + i % 3, ml) if role != "out" else np.zeros(b, int)
        n_tg = 0 if role == "in" else 3 + i % 4
        starts = int(n_in.max()) + rows % 2
        length = int(starts.max()) + n_tg + 2
        if mi["type"] == "seq_emb":
            tensor = rng.standard_normal((b, length, mi["orig_emb_dim"]))
            im = np.ones((b, length), bool)
            for r in range(b):
                im[r, : n_in[r]] = False
            tensor[im] = 0.0
            tm, dam = np.ones((b, length), bool), np.zeros((b, length), np.int64)
        else:
            tensor, im, tm, dam = _sequence(rng, b, length, mi["vocab_size"], n_in, n_tg, starts)
        out[mod] = dict(tensor=tensor, input_mask=im, target_mask=tm, decoder_attention_mask=dam)
    return out


def ml4m_token_counts(config: dict, mod_dict: dict) -> tuple:
    """(num_encoder_tokens, num_decoder_tokens) that keep every unmasked input and target
    token of every row (the largest per-row counts), as FourM.forward would be called with."""
    info = ml4m_modality_info(config)
    b = len(next(iter(mod_dict.values()))["tensor"])
    n_enc, n_dec = np.zeros(b, int), np.zeros(b, int)
    for mod, d in mod_dict.items():
        if mod in config["domains_in"] and info[mod]["encoder"] is not None:
            n_enc += (~np.asarray(d["input_mask"], bool)).sum(1)
        if mod in config["domains_out"] and info[mod]["decoder"] is not None:
            tm = np.asarray(d["target_mask"], bool)
            if info[mod]["type"] == "img":
                n_dec += (~tm).sum(1)
            else:
                n_dec += (~(tm[:, 1:] | tm[:, :-1])).sum(1)
    return int(n_enc.max()), int(n_dec.max())
