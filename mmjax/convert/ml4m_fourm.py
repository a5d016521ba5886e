"""ml-4m 4M / 4M-21 checkpoints <-> mmjax 4M bundles, weights both ways.

`convert_ml4m(checkpoint, out)` reads an ml-4m safetensors file (its config in the metadata, or
a config.json given apart), maps every tensor onto a `FourM` with the options that reproduce
ml-4m's forward pass (see `ml4m_config.model_config`), and writes a bundle whose registry keeps
ml-4m's modality names. `export_ml4m(bundle, out)` writes the state dict back, with ml-4m's
names, order and metadata (`ml4m_fourm_export`), so import then export is the identity.

Layouts: torch Linear weights are [out, in], flax kernels [in, out]; ml-4m's fused qkv [3D, D]
and kv [2D, D] hold q, k, v as consecutive D-row blocks of num_heads x head_dim rows, mmjax has
one [D, heads, head_dim] kernel each; the output projection [D, D] becomes [heads, head_dim, D].
SwiGLU fc1 / fc3 / fc2 are mmjax's gate / up / down. ml-4m keeps zero LayerNorm bias buffers
when norm_bias is False, and its fixed sin-cos position tables as buffers; both are checked on
import and rebuilt on export.
"""

import flax
import numpy as np

from mmjax.convert import ml4m_config as mc
from mmjax.convert.ml4m_fourm_export import export_ml4m, params_to_state
from mmjax.convert.safetensors_io import read_safetensors
from mmjax.fourm.bundle import save_fourm
from mmjax.fourm.modalities import build_registry
from mmjax.fourm.params import abstract_params
from mmjax.fourm.presets import build_fourm
from mmjax.storage import paths

ZERO_ATOL = 0.0  # a bias-free LayerNorm's stored bias buffer must be exactly zero


class _Reader:
    """Takes tensors from an ml-4m state dict by name, checking presence and shape."""

    def __init__(self, state: dict, source: str):
        self.state, self.source, self.used = state, source, set()

    def has(self, name: str) -> bool:
        return name in self.state

    def take(self, name: str, shape: tuple) -> np.ndarray:
        if name not in self.state:
            raise ValueError(f"{self.source}: missing tensor {name!r} (expected shape {shape})")
        value = np.asarray(self.state[name])
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{self.source}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(shape)} from the config"
            )
        self.used.add(name)
        return value.astype(np.float32)

    def zeros(self, name: str, shape: tuple) -> None:
        """A buffer that must hold zeros (LayerNorm bias with norm_bias=False)."""
        value = self.take(name, shape)
        if np.abs(value).max(initial=0.0) > ZERO_ATOL:
            raise ValueError(
                f"{self.source}: tensor {name!r} is not zero, but the config has norm_bias=False"
            )

    def check_unused(self) -> None:
        left = sorted(set(self.state) - self.used)
        if left:
            raise ValueError(
                f"{self.source}: {len(left)} tensor(s) the config does not explain, e.g. "
                f"{left[:5]} (is the config the checkpoint's own?)"
            )


def _norm(r, flat, src, dst, d, bias):
    flat[f"{dst}/scale"] = r.take(f"{src}.weight", (d,))
    if bias:
        flat[f"{dst}/bias"] = r.take(f"{src}.bias", (d,))
    elif r.has(f"{src}.bias"):
        r.zeros(f"{src}.bias", (d,))


def _heads_in(w: np.ndarray, n: int) -> np.ndarray:
    """torch [N*H, D] -> flax kernel [D, N, H]."""
    return w.T.reshape(w.shape[1], n, -1)


def _attention(r, flat, src, dst, mcfg, cross):
    d, n = mcfg["width"], mcfg["num_heads"]
    hd = d // n
    qb, pb, nb = mcfg["qkv_bias"], mcfg["proj_bias"], mcfg["norm_bias"]
    if cross:
        ws = [r.take(f"{src}.q.weight", (d, d))]
        ws += np.split(r.take(f"{src}.kv.weight", (2 * d, d)), 2)
        bs = None
        if qb:
            bs = [r.take(f"{src}.q.bias", (d,)), *np.split(r.take(f"{src}.kv.bias", (2 * d,)), 2)]
    else:
        ws = np.split(r.take(f"{src}.qkv.weight", (3 * d, d)), 3)
        bs = np.split(r.take(f"{src}.qkv.bias", (3 * d,)), 3) if qb else None
    for i, part in enumerate(("query", "key", "value")):
        flat[f"{dst}/{part}/kernel"] = _heads_in(ws[i], n)
        if bs is not None:
            flat[f"{dst}/{part}/bias"] = bs[i].reshape(n, hd)
    flat[f"{dst}/out/kernel"] = r.take(f"{src}.proj.weight", (d, d)).T.reshape(n, hd, d)
    if pb:
        flat[f"{dst}/out/bias"] = r.take(f"{src}.proj.bias", (d,))
    if mcfg["qk_norm"]:
        _norm(r, flat, f"{src}.q_norm", f"{dst}/query_norm", hd, nb)
        _norm(r, flat, f"{src}.k_norm", f"{dst}/key_norm", hd, nb)


def _mlp(r, flat, src, dst, mcfg):
    d, h, bias = mcfg["width"], mcfg["mlp_dim"], mcfg["mlp_bias"]
    names = (("fc1", "gate", h, d), ("fc3", "up", h, d), ("fc2", "down", d, h))
    if mcfg["mlp_type"] == "gelu":
        names = (("fc1", "fc1", h, d), ("fc2", "fc2", d, h))
    for t_name, f_name, out_f, in_f in names:
        flat[f"{dst}/{f_name}/kernel"] = r.take(f"{src}.{t_name}.weight", (out_f, in_f)).T
        if bias:
            flat[f"{dst}/{f_name}/bias"] = r.take(f"{src}.{t_name}.bias", (out_f,))


def _embeddings(r, flat, config, mcfg, registry) -> dict:
    """Per-modality embeddings and heads; returns which sides ml-4m has for each modality."""
    d, m = mcfg["width"], len(registry)
    mod_emb, dec_mod_emb = np.zeros((m, d), np.float32), np.zeros((m, d), np.float32)
    sides = {"encoder": [], "decoder": [], "pos_rows": {}}
    for i, spec in enumerate(registry):
        name, n = spec.name, spec.num_tokens
        enc, dec = f"encoder_embeddings.{name}", f"decoder_embeddings.{name}"
        has_enc = name in config["domains_in"] and r.has(f"{enc}.mod_emb")
        has_dec = name in config["domains_out"] and r.has(f"{dec}.mod_emb")
        pos_key = f"{enc if has_enc else dec}.pos_emb"
        if not spec.learned_positions and spec.kind in ("sequence", "sequence_embedding"):
            n = int(np.shape(r.state[pos_key])[1]) if r.has(pos_key) else n  # ml-4m keeps 512
        sides["pos_rows"][name] = n
        fixed = mc.ml4m_sincos(spec.kind, n, spec.grid, d)
        tables = {}
        for side, prefix, present in (("encoder", enc, has_enc), ("decoder", dec, has_dec)):
            if not present:
                continue
            sides[side].append(name)
            emb = r.take(f"{prefix}.mod_emb", (1, 1, d))[0, 0]
            (mod_emb if side == "encoder" else dec_mod_emb)[i] = emb
            pos = r.take(f"{prefix}.pos_emb", (1, n, d))[0]
            if spec.learned_positions:
                pos = pos[: spec.num_tokens]
                tables[f"{side}_pos"] = pos
            elif mc.is_learned(pos, fixed):
                raise ValueError(
                    f"{r.source}: tensor '{prefix}.pos_emb' is not ml-4m's sin-cos table, though "
                    f"the other side of modality {name!r} is"
                )
            if spec.kind in ("image_tokens", "sequence"):
                tables[side] = r.take(f"{prefix}.token_emb.weight", (spec.vocab_size, d))
            if side == "decoder":
                flat[f"heads/head_{name}/kernel"] = r.take(
                    f"{prefix}.to_logits.weight", (spec.vocab_size, d)
                ).T
        if not has_enc and not has_dec:
            raise ValueError(f"{r.source}: no encoder or decoder embedding for modality {name!r}")
        if not has_enc:
            mod_emb[i] = dec_mod_emb[i]
        if not has_dec:
            dec_mod_emb[i] = mod_emb[i]
        if spec.kind == "pixels":
            shape = (d, spec.patch_size**2 * spec.channels)
            flat[f"embeddings/patch_embed_{name}/kernel"] = r.take(f"{enc}.proj.weight", shape).T
        if spec.kind == "sequence_embedding":
            w = r.take(f"{enc}.emb_proj.weight", (d, spec.embed_dim))
            flat[f"embeddings/sequence_proj_{name}/kernel"] = w.T
            flat[f"embeddings/sequence_proj_{name}/bias"] = r.take(f"{enc}.emb_proj.bias", (d,))
        if spec.kind in ("image_tokens", "sequence"):
            enc_t = tables.get("encoder", tables.get("decoder"))
            flat[f"embeddings/tok_emb_{name}"] = enc_t
            flat[f"embeddings/dec_tok_emb_{name}"] = tables.get("decoder", enc_t)
            if not has_dec:
                flat[f"heads/head_{name}/kernel"] = np.zeros((d, spec.vocab_size), np.float32)
        if spec.learned_positions:
            enc_p = tables.get("encoder_pos", tables.get("decoder_pos"))
            flat[f"embeddings/pos_emb_{name}"] = enc_p
            if spec.is_target:
                flat[f"embeddings/dec_pos_emb_{name}"] = tables.get("decoder_pos", enc_p)
    flat["embeddings/modality_emb"] = mod_emb
    flat["embeddings/dec_modality_emb"] = dec_mod_emb
    return sides


def state_to_params(state: dict, config: dict, source: str = "ml-4m checkpoint"):
    """(model_config, modalities, params, layout) of the mmjax FourM equal to ml-4m's
    `state`; layout records which modalities have encoder / decoder embeddings in ml-4m and
    their stored position rows, for the way back."""
    mc.check_config(config)
    mcfg = mc.model_config(config)
    modalities = mc.registry_config(config, state)
    registry = build_registry(modalities)
    r, flat = _Reader(state, source), {}
    d = mcfg["width"]
    flat["embeddings/mask_token"] = r.take("mask_token", (1, 1, d))[0, 0]
    if mcfg["num_register_tokens"]:
        flat["register_tokens"] = r.take("register_tokens", (1, mcfg["num_register_tokens"], d))[0]
    sides = _embeddings(r, flat, config, mcfg, registry)
    nb = mcfg["norm_bias"]
    for i in range(mcfg["encoder_depth"]):
        src, dst = f"encoder.{i}", f"encoder_blocks_{i}"
        _norm(r, flat, f"{src}.norm1", f"{dst}/norm_attn", d, nb)
        _attention(r, flat, f"{src}.attn", f"{dst}/attn", mcfg, cross=False)
        _norm(r, flat, f"{src}.norm2", f"{dst}/norm_mlp", d, nb)
        _mlp(r, flat, f"{src}.mlp", f"{dst}/mlp", mcfg)
    _norm(r, flat, "encoder_norm", "encoder_norm", d, nb)
    flat["context_proj/kernel"] = r.take("decoder_proj_context.weight", (d, d)).T
    flat["context_proj/bias"] = r.take("decoder_proj_context.bias", (d,))
    for i in range(mcfg["decoder_depth"]):
        src, dst = f"decoder.{i}", f"decoder_blocks_{i}"
        _norm(r, flat, f"{src}.norm1", f"{dst}/norm_self", d, nb)
        _attention(r, flat, f"{src}.self_attn", f"{dst}/self_attn", mcfg, cross=False)
        _norm(r, flat, f"{src}.query_norm", f"{dst}/norm_query", d, nb)
        _norm(r, flat, f"{src}.context_norm", f"{dst}/norm_context", d, nb)
        _attention(r, flat, f"{src}.cross_attn", f"{dst}/cross_attn", mcfg, cross=True)
        _norm(r, flat, f"{src}.norm2", f"{dst}/norm_mlp", d, nb)
        _mlp(r, flat, f"{src}.mlp", f"{dst}/mlp", mcfg)
    _norm(r, flat, "decoder_norm", "decoder_norm", d, nb)
    r.check_unused()
    params = flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    _check_tree(params, build_fourm(mcfg, registry))
    return mcfg, modalities, params, sides


def _check_tree(params, model) -> None:
    """The converted tree has exactly the model's parameter names and shapes."""
    want = {
        "/".join(k): tuple(v.shape)
        for k, v in flax.traverse_util.flatten_dict(abstract_params(model)).items()
    }
    got = {"/".join(k): tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params).items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise AssertionError(f"converted parameters differ from the model's: {diff[:6]}")


def looks_like_vqvae(state: dict, config: dict) -> bool:
    """An ml-4m VQ-VAE / DiVAE tokenizer checkpoint rather than a 4M model."""
    if any(k.startswith("encoder_embeddings.") for k in state):
        return False
    vq_keys = ("quantize.", "quantizer.", "encoder.", "decoder.")
    return any(k.startswith(vq_keys) for k in state) or any(
        k in config for k in ("quantizer_type", "codebook_size", "image_size_enc")
    )


def read_checkpoint(checkpoint, config_path=None) -> tuple[dict, dict, dict]:
    """(state, parsed config, raw metadata) of an ml-4m safetensors file; `config_path`
    (a JSON file) supplies or overrides the config."""
    state, metadata = read_safetensors(checkpoint)
    config = mc.parse_config(metadata)
    if config_path is not None:
        extra = paths.read_json(config_path)
        if not isinstance(extra, dict):
            raise ValueError(f"{config_path}: expected a JSON object (an ml-4m FM config)")
        config.update(mc.parse_config(extra))
        metadata = {**metadata, **{k: str(v) for k, v in extra.items()}}
    return state, config, metadata


def convert_ml4m(checkpoint, out, config=None, tokenizers=None, text_tokenizer=None) -> str:
    """Converts an ml-4m 4M safetensors file into an mmjax 4M bundle at `out`.

    config: optional path of a JSON config (for files without one in their metadata);
    tokenizers: {modality: Tokenizer bundle dir} for the registry's tokenizer references;
    text_tokenizer: the text tokenizer file of the sequence modalities. Returns `out`."""
    source = str(checkpoint)
    state, cfg, metadata = read_checkpoint(checkpoint, config)
    if not any(k.startswith("encoder_embeddings.") for k in state):
        raise ValueError(
            f"{source}: not an ml-4m 4M checkpoint (no 'encoder_embeddings.*' tensors; "
            f"found e.g. {sorted(state)[:3]})"
        )
    mcfg, modalities, params, sides = state_to_params(state, cfg, source)
    for name, ref in dict(tokenizers or {}).items():
        if name not in modalities:
            raise ValueError(
                f"tokenizer given for {name!r}, not a modality of {sorted(modalities)}"
            )
        modalities[name]["tokenizer"] = str(ref)
    if text_tokenizer is not None:
        for entry in modalities.values():
            if entry["kind"] == "sequence":
                entry["tokenizer"] = str(text_tokenizer)
    ml4m = {
        "metadata": {k: str(v) for k, v in metadata.items()},
        "config": _jsonable(cfg),
        "keys": list(state),
        **sides,
    }
    return save_fourm(
        out, model_config=mcfg, modalities=modalities, params=params,
        text_tokenizer=None if text_tokenizer is None else str(text_tokenizer), ml4m=ml4m,
    )  # fmt: skip


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["convert_ml4m", "export_ml4m", "params_to_state", "read_checkpoint", "state_to_params"]
