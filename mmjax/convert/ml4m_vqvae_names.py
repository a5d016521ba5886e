"""ml-4m VQ-VAE state-dict names <-> mmjax Autoencoder variables, tensor by tensor.

Each `Entry` ties one ml-4m tensor (torch layout: Linear [out, in], Conv2d [out, in, kh, kw],
position tables [1, D, h, w]) to one or more mmjax leaves (flax layout: kernels [in, out],
attention kernels [D, heads, head_dim], tables [h, w, D]). Every transform is a reshape or
a transpose, so a round trip reproduces the tensors bit for bit.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from mmjax.quantizers.output import STATS

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    """ml-4m tensor `name` of `shape` <-> mmjax leaves `paths`."""

    name: str
    shape: tuple[int, ...]
    paths: tuple[Path, ...]
    to_mmjax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_ml4m: Callable[..., np.ndarray]


def _one(name, shape, path, fwd, back) -> Entry:
    return Entry(name, tuple(shape), (path,), lambda a: (fwd(a),), back)


def _linear(name: str, path: Path, d_in: int, d_out: int) -> list[Entry]:
    return [
        _one(f"{name}.weight", (d_out, d_in), (*path, "kernel"), lambda w: w.T, lambda k: k.T),
        _one(f"{name}.bias", (d_out,), (*path, "bias"), lambda b: b, lambda b: b),
    ]


def _conv1x1(name: str, path: Path, d_in: int, d_out: int) -> list[Entry]:
    return [
        _one(
            f"{name}.weight", (d_out, d_in, 1, 1), (*path, "kernel"),
            lambda w: w[:, :, 0, 0].T, lambda k: k.T[:, :, None, None],
        ),
        _one(f"{name}.bias", (d_out,), (*path, "bias"), lambda b: b, lambda b: b),
    ]  # fmt: skip


def _norm(name: str, path: Path, d: int) -> list[Entry]:
    return [
        _one(f"{name}.weight", (d,), (*path, "scale"), lambda w: w, lambda w: w),
        _one(f"{name}.bias", (d,), (*path, "bias"), lambda b: b, lambda b: b),
    ]


def _qkv(name: str, path: Path, d: int, heads: int) -> list[Entry]:
    """Fused qkv Linear [3D, D] (rows: q, k, v; each heads x head_dim) <-> query/key/value."""
    hd = d // heads
    parts = ("query", "key", "value")

    def w_fwd(w):
        return tuple(w[i * d : (i + 1) * d].T.reshape(d, heads, hd) for i in range(3))

    def w_back(*ks):
        return np.concatenate([k.reshape(d, d).T for k in ks], axis=0)

    def b_fwd(b):
        return tuple(b[i * d : (i + 1) * d].reshape(heads, hd) for i in range(3))

    def b_back(*bs):
        return np.concatenate([b.reshape(d) for b in bs])

    return [
        Entry(f"{name}.weight", (3 * d, d), tuple((*path, p, "kernel") for p in parts),
              w_fwd, w_back),
        Entry(f"{name}.bias", (3 * d,), tuple((*path, p, "bias") for p in parts), b_fwd, b_back),
    ]  # fmt: skip


def _attn_out(name: str, path: Path, d: int, heads: int) -> list[Entry]:
    hd = d // heads
    return [
        _one(
            f"{name}.weight", (d, d), (*path, "kernel"),
            lambda w: w.T.reshape(heads, hd, d), lambda k: k.reshape(d, d).T,
        ),
        _one(f"{name}.bias", (d,), (*path, "bias"), lambda b: b, lambda b: b),
    ]  # fmt: skip


def _pos_emb(name: str, path: Path, d: int, grid: int) -> Entry:
    return _one(
        name, (1, d, grid, grid), path,
        lambda t: t[0].transpose(1, 2, 0), lambda t: t.transpose(2, 0, 1)[None],
    )  # fmt: skip


def _trunk(side: str, path: Path, arch: dict) -> list[Entry]:
    """Position table, blocks and optional post-MLP of the encoder or decoder ViT."""
    d, heads, mlp = arch["width"], arch["heads"], arch["mlp_dim"]
    out = [_pos_emb(f"{side}.pos_emb", (*path, "pos_emb"), d, arch["grid"])]
    for i in range(arch["depth"]):
        n, p = f"{side}.blocks.{i}", (*path, f"block_{i}")
        out += _norm(f"{n}.norm1", (*p, "norm_attn"), d)
        out += _qkv(f"{n}.attn.qkv", (*p, "attn"), d, heads)
        out += _attn_out(f"{n}.attn.proj", (*p, "attn", "out"), d, heads)
        out += _norm(f"{n}.norm2", (*p, "norm_mlp"), d)
        out += _linear(f"{n}.mlp.fc1", (*p, "mlp", "fc1"), d, mlp)
        out += _linear(f"{n}.mlp.fc2", (*p, "mlp", "fc2"), mlp, d)
    if arch["post_mlp"]:
        out += _norm(f"{side}.norm_mlp", (*path, "post_mlp", "norm"), d)
        out += _linear(f"{side}.post_mlp.fc1", (*path, "post_mlp", "fc1"), d, mlp)
        out += _linear(f"{side}.post_mlp.fc2", (*path, "post_mlp", "fc2"), mlp, d)
    return out


def _patch_proj(arch: dict) -> list[Entry]:
    """Conv2d(C, D, p, stride p) [D, C, p, p] <-> Dense over patchified (p, p, C) [p*p*C, D]."""
    d, c, p = arch["width"], arch["in_channels"], arch["patch_size"]
    path = ("params", "encoder", "patch_embed")
    return [
        _one(
            "encoder.proj.weight", (d, c, p, p), (*path, "kernel"),
            lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * c, d),
            lambda k: k.reshape(p, p, c, d).transpose(3, 2, 0, 1),
        ),
        _one("encoder.proj.bias", (d,), (*path, "bias"), lambda b: b, lambda b: b),
    ]  # fmt: skip


def _out_proj(arch: dict) -> list[Entry]:
    """Linear(D, C*p*p) with outputs ordered (c, ph, pw) <-> Dense with outputs (ph, pw, c)."""
    d, c, p = arch["width"], arch["out_channels"], arch["patch_size"]
    path = ("params", "decoder", "to_patches")
    return [
        _one(
            "decoder.out_proj.weight", (c * p * p, d), (*path, "kernel"),
            lambda w: w.reshape(c, p, p, d).transpose(3, 1, 2, 0).reshape(d, p * p * c),
            lambda k: k.reshape(d, p, p, c).transpose(3, 1, 2, 0).reshape(c * p * p, d),
        ),
        _one(
            "decoder.out_proj.bias", (c * p * p,), (*path, "bias"),
            lambda b: b.reshape(c, p, p).transpose(1, 2, 0).reshape(-1),
            lambda b: b.reshape(p, p, c).transpose(2, 0, 1).reshape(-1),
        ),
    ]  # fmt: skip


def entries(enc: dict, dec: dict, latent_dim: int, codebook_size: int, n_labels) -> list[Entry]:
    """Every tensor of an ml-4m ViT VQ-VAE with the given encoder/decoder architectures
    (width, heads, depth, mlp_dim, grid, post_mlp, patch_size, in/out_channels), except the
    quantizer's `initted` flag, which has no mmjax counterpart."""
    out = []
    if n_labels:
        out.append(
            _one(
                "cls_emb.weight", (n_labels, enc["in_channels"]),
                ("params", "encoder", "in_embed", "kernel"), lambda w: w, lambda w: w,
            )
        )  # fmt: skip
    out += _patch_proj(enc)
    out += _trunk("encoder", ("params", "encoder", "trunk"), enc)
    out += _conv1x1("quant_proj", ("params", "encoder", "to_z"), enc["width"], latent_dim)
    stats = (STATS, "quantizer")
    out.append(
        Entry(
            "quantize._codebook.embed", (codebook_size, latent_dim),
            ((*stats, "codebook"), (*stats, "embed_sum")),
            lambda e: (e, e.copy()), lambda codebook, embed_sum: codebook,
        )
    )  # fmt: skip
    out.append(
        _one(
            "quantize._codebook.cluster_size", (codebook_size,), (*stats, "cluster_size"),
            lambda c: c, lambda c: c,
        )
    )  # fmt: skip
    out += _conv1x1("post_quant_proj", ("params", "decoder", "from_z"), latent_dim, dec["width"])
    out += _trunk("decoder", ("params", "decoder", "trunk"), dec)
    out += _out_proj(dec)
    return out
