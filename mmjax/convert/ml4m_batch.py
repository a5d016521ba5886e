"""ml-4m `mod_dict` inputs -> mmjax's masked batch, so a converted model runs on ml-4m data.

ml-4m's mod_dict: {domain: {"tensor", "input_mask", "target_mask", "decoder_attention_mask"}}
(numpy or anything array-like; True in the masks = NOT used). rgb pixels arrive ImageNet-
normalised [B, C, H, W] (mmjax takes [0, 1] [B, H, W, C]); image tokens [B, h, w]; sequences
[B, L]; sequence embeddings [B, L, E].

Encoder tokens: every unmasked input, domains in mod_dict order, grid / sequence order within
one; a sequence token's position is its rank among the unmasked inputs (ml-4m's cumsum).
Decoder tokens, in ml-4m's order: image targets row-major; for sequences every t with
target_mask[t] and target_mask[t + 1] unmasked, reading tensor[t] to predict tensor[t + 1] at
the rank of t among the targets (ranks past max_length fall back to 0, as in ml-4m). Decoder
attention is mmjax's (all targets of an image modality, causal within a sequence), which is
ml-4m's whenever its decoder budget keeps every target.
"""

import numpy as np

from mmjax.fourm.embeddings import IMAGENET_MEAN, IMAGENET_STD
from mmjax.fourm.modalities import Registry


def _ranks(valid: np.ndarray) -> np.ndarray:
    return np.cumsum(valid) - 1


def batch_from_mod_dict(
    mod_dict: dict,
    registry: Registry,
    domains_in,
    domains_out,
    num_encoder_tokens: int | None = None,
    num_decoder_tokens: int | None = None,
) -> tuple[dict, dict]:
    """(batch, targets): the masked batch (padded to the token counts, default the largest
    row) and {domain: [B, n] indices of its decoder tokens in the batch's T axis} (ml-4m's
    order; n may differ per row, then the rows are padded with -1)."""
    b = len(next(iter(mod_dict.values()))["tensor"])
    enc = [[] for _ in range(b)]  # (token, modality, position)
    dec = [[] for _ in range(b)]  # (input, target, modality, position, domain)
    batch = {}
    for name, d in mod_dict.items():
        if name not in registry:
            raise ValueError(f"mod_dict domain {name!r} is not a modality of {registry.names}")
        spec, m = registry[name], registry.index(name)
        tensor = np.asarray(d["tensor"])
        in_mask = np.asarray(d["input_mask"], bool).reshape(b, -1)
        tg_mask = np.asarray(d["target_mask"], bool).reshape(b, -1)
        if spec.kind == "pixels":
            mean = np.asarray(IMAGENET_MEAN)[:, None, None]
            std = np.asarray(IMAGENET_STD)[:, None, None]
            batch[f"pixels_{name}"] = (tensor * std + mean).transpose(0, 2, 3, 1).astype(np.float32)
        if spec.kind == "sequence_embedding":
            vectors = np.zeros((b, spec.max_length, spec.embed_dim), np.float32)
            keep = min(spec.max_length, tensor.shape[1])
            if np.any(~in_mask[:, keep:]):
                raise ValueError(f"{name}: inputs beyond max_length {spec.max_length}")
            vectors[:, :keep] = tensor[:, :keep]
            batch[f"embeddings_{name}"] = vectors
        flat = tensor.reshape(b, -1) if spec.kind in ("image_tokens", "sequence") else None
        for r in range(b):
            if name in domains_in:
                valid = ~in_mask[r]
                rank = _ranks(valid)
                for t in np.flatnonzero(valid):
                    pos = t if spec.kind in ("image_tokens", "pixels") else rank[t]
                    token = flat[r, t] if flat is not None else t
                    enc[r].append((int(token) if spec.kind != "pixels" else 0, m, int(pos)))
            if name in domains_out and spec.is_target:
                valid = ~tg_mask[r]
                if spec.kind == "image_tokens":
                    for t in np.flatnonzero(valid):
                        dec[r].append((0, int(flat[r, t]), m, int(t), name))
                else:
                    rank = _ranks(valid)
                    for t in np.flatnonzero(valid[:-1] & valid[1:]):
                        pos = rank[t] if rank[t] < spec.max_length else 0
                        dec[r].append((int(flat[r, t]), int(flat[r, t + 1]), m, int(pos), name))
    e = num_encoder_tokens or max(len(x) for x in enc)
    t_len = num_decoder_tokens or max(len(x) for x in dec)
    for what, rows, n in (("encoder", enc, e), ("decoder", dec, t_len)):
        if max(len(x) for x in rows) > n:
            raise ValueError(f"{what}: {max(len(x) for x in rows)} tokens exceed the budget {n}")
    for k in ("enc_tokens", "enc_modality", "enc_positions"):
        batch[k] = np.zeros((b, e), np.int32)
    batch["enc_mask"] = np.zeros((b, e), bool)
    keys = ("dec_input_tokens", "dec_target_tokens", "dec_modality", "dec_positions")
    batch.update({k: np.zeros((b, t_len), np.int32) for k in keys})
    batch["dec_mask"] = np.zeros((b, t_len), bool)
    targets = {
        n: [[] for _ in range(b)] for n in mod_dict if n in domains_out and registry[n].is_target
    }
    for r in range(b):
        for i, (tok, m, pos) in enumerate(enc[r]):
            batch["enc_tokens"][r, i], batch["enc_modality"][r, i] = tok, m
            batch["enc_positions"][r, i], batch["enc_mask"][r, i] = pos, True
        for i, (inp, tgt, m, pos, name) in enumerate(dec[r]):
            for k, v in zip(keys, (inp, tgt, m, pos), strict=True):
                batch[k][r, i] = v
            batch["dec_mask"][r, i] = True
            targets[name][r].append(i)
    width = {n: max(len(x) for x in rows) for n, rows in targets.items()}
    return batch, {
        n: np.array([x + [-1] * (width[n] - len(x)) for x in rows], np.int64).reshape(b, -1)
        for n, rows in targets.items()
    }


def logits_by_domain(logits: np.ndarray, targets: dict, registry: Registry) -> dict:
    """mmjax logits [B, T, V_max] -> {domain: [B, n, vocab]} in ml-4m's decoder order."""
    logits = np.asarray(logits)
    out = {}
    for name, idx in targets.items():
        v = registry[name].vocab_size
        out[name] = np.take_along_axis(logits, np.maximum(idx, 0)[..., None], axis=1)[..., :v]
    return out
