"""mmjax 4M bundles converted from ml-4m -> ml-4m state dicts and safetensors files.

The inverse of `mmjax.convert.ml4m_fourm`: every parameter goes back under ml-4m's name and
layout (torch [out, in] Linear weights, fused qkv / kv), in the source file's order, with the
source's metadata; LayerNorm bias buffers of bias-free norms are written as zeros and fixed
sin-cos position buffers are recomputed as ml-4m computes them.
"""

import flax
import flax.linen as nn
import jax
import numpy as np

from mmjax.convert import ml4m_config as mc
from mmjax.convert.safetensors_io import write_safetensors
from mmjax.fourm.bundle import load_fourm
from mmjax.fourm.modalities import build_registry


def params_to_state(params, meta: dict) -> dict:
    """ml-4m's state dict (names, order) of a converted bundle's params."""
    if "ml4m" not in meta:
        raise ValueError(
            "to-ml4m: the bundle was not converted from ml-4m (its fourm.json has no 'ml4m' "
            "section), so ml-4m's names and config are unknown"
        )
    info, mcfg = meta["ml4m"], meta["model"]
    registry = build_registry(meta["modalities"])
    flat = {
        "/".join(k): np.asarray(v, np.float32)
        for k, v in flax.traverse_util.flatten_dict(nn.unbox(params)).items()
    }
    get = flat.__getitem__
    d, n = mcfg["width"], mcfg["num_heads"]
    out = {"mask_token": get("embeddings/mask_token")[None, None]}
    if mcfg.get("num_register_tokens"):
        out["register_tokens"] = get("register_tokens")[None]
    _export_embeddings(out, get, info, registry, d)
    nb = mcfg.get("norm_bias", False)

    def norm(src, dst, width=d):
        out[f"{dst}.weight"] = get(f"{src}/scale")
        out[f"{dst}.bias"] = get(f"{src}/bias") if nb else np.zeros(width, np.float32)

    def attention(src, dst, cross):
        q, k, v = (get(f"{src}/{p}/kernel").reshape(d, d).T for p in ("query", "key", "value"))
        if cross:
            out[f"{dst}.q.weight"], out[f"{dst}.kv.weight"] = q, np.concatenate([k, v])
        else:
            out[f"{dst}.qkv.weight"] = np.concatenate([q, k, v])
        if mcfg.get("qkv_bias"):
            bs = [get(f"{src}/{p}/bias").reshape(d) for p in ("query", "key", "value")]
            if cross:
                out[f"{dst}.q.bias"], out[f"{dst}.kv.bias"] = bs[0], np.concatenate(bs[1:])
            else:
                out[f"{dst}.qkv.bias"] = np.concatenate(bs)
        out[f"{dst}.proj.weight"] = get(f"{src}/out/kernel").reshape(d, d).T
        if mcfg.get("proj_bias"):
            out[f"{dst}.proj.bias"] = get(f"{src}/out/bias")
        if mcfg.get("qk_norm"):
            norm(f"{src}/query_norm", f"{dst}.q_norm", d // n)
            norm(f"{src}/key_norm", f"{dst}.k_norm", d // n)

    def mlp(src, dst):
        pairs = [("gate", "fc1"), ("down", "fc2"), ("up", "fc3")]
        if mcfg.get("mlp_type") == "gelu":
            pairs = [("fc1", "fc1"), ("fc2", "fc2")]
        for f_name, t_name in pairs:
            out[f"{dst}.{t_name}.weight"] = get(f"{src}/{f_name}/kernel").T
            if mcfg.get("mlp_bias"):
                out[f"{dst}.{t_name}.bias"] = get(f"{src}/{f_name}/bias")

    for i in range(mcfg["encoder_depth"]):
        src, dst = f"encoder_blocks_{i}", f"encoder.{i}"
        norm(f"{src}/norm_attn", f"{dst}.norm1")
        attention(f"{src}/attn", f"{dst}.attn", cross=False)
        norm(f"{src}/norm_mlp", f"{dst}.norm2")
        mlp(f"{src}/mlp", f"{dst}.mlp")
    norm("encoder_norm", "encoder_norm")
    out["decoder_proj_context.weight"] = get("context_proj/kernel").T
    out["decoder_proj_context.bias"] = get("context_proj/bias")
    for i in range(mcfg["decoder_depth"]):
        src, dst = f"decoder_blocks_{i}", f"decoder.{i}"
        norm(f"{src}/norm_self", f"{dst}.norm1")
        attention(f"{src}/self_attn", f"{dst}.self_attn", cross=False)
        norm(f"{src}/norm_query", f"{dst}.query_norm")
        norm(f"{src}/norm_context", f"{dst}.context_norm")
        attention(f"{src}/cross_attn", f"{dst}.cross_attn", cross=True)
        norm(f"{src}/norm_mlp", f"{dst}.norm2")
        mlp(f"{src}/mlp", f"{dst}.mlp")
    norm("decoder_norm", "decoder_norm")
    order = {k: i for i, k in enumerate(info.get("keys", []))}
    keys = sorted(out, key=lambda k: order.get(k, len(order)))
    return {k: np.ascontiguousarray(out[k], np.float32) for k in keys}


def _export_embeddings(out, get, info, registry, d) -> None:
    for i, spec in enumerate(registry):
        name = spec.name
        n = info.get("pos_rows", {}).get(name, spec.num_tokens)
        fixed = mc.ml4m_sincos(spec.kind, n, spec.grid, d)
        for side in ("encoder", "decoder"):
            if name not in info[side]:
                continue
            prefix = f"{side}_embeddings.{name}"
            mod = "embeddings/modality_emb" if side == "encoder" else "embeddings/dec_modality_emb"
            out[f"{prefix}.mod_emb"] = get(mod)[i][None, None]
            if spec.learned_positions:
                pos_key = "pos_emb" if side == "encoder" else "dec_pos_emb"
                out[f"{prefix}.pos_emb"] = get(f"embeddings/{pos_key}_{name}")[None]
            else:
                out[f"{prefix}.pos_emb"] = fixed[None]
            if side == "encoder" and spec.kind == "pixels":
                out[f"{prefix}.proj.weight"] = get(f"embeddings/patch_embed_{name}/kernel").T
            elif side == "encoder" and spec.kind == "sequence_embedding":
                out[f"{prefix}.emb_proj.weight"] = get(f"embeddings/sequence_proj_{name}/kernel").T
                out[f"{prefix}.emb_proj.bias"] = get(f"embeddings/sequence_proj_{name}/bias")
            elif side == "encoder":
                out[f"{prefix}.token_emb.weight"] = get(f"embeddings/tok_emb_{name}")
            else:
                out[f"{prefix}.token_emb.weight"] = get(f"embeddings/dec_tok_emb_{name}")
                out[f"{prefix}.to_logits.weight"] = get(f"heads/head_{name}/kernel").T


def export_ml4m(bundle, out) -> str:
    """Writes the converted 4M bundle at `bundle` as an ml-4m safetensors file `out` (ml-4m's
    tensor names and metadata). Returns `out`."""
    _, variables, _, meta = load_fourm(bundle)
    params = jax.device_get(variables["params"])
    state = params_to_state(params, meta)
    write_safetensors(out, state, meta["ml4m"].get("metadata", {}))
    return str(out)
