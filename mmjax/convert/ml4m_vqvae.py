"""ml-4m ViT VQ-VAE tokenizers (fourm/vq/vqvae.py VQVAE: semseg, CLIP / DINOv2 / ImageBind
feature maps) <-> mmjax Tokenizer bundles.

`convert_ml4m_vqvae(checkpoint, out)` reads a released `.safetensors` file (config in its
metadata, as ml-4m writes it) and writes a bundle whose `encode` gives ml-4m's tokens and whose
`decode` gives its reconstructions; `export_ml4m_vqvae(bundle, out)` writes the file back
(ml-4m's names, shapes, dtypes and metadata). Semseg tokenizers become `semseg` bundles
(class ids in, logits -> argmax out); the others `features` bundles fed ml-4m's model input
channels-last ([B, h, w, C]; for CLIP-style tokenizers the feature map itself). A bundle
works at one resolution: the stored position tables' grid, or another one given at
conversion (the tables resized once, with ml-4m's run-time bicubic interpolation).
"""

import json

import jax
import numpy as np
from etils import epath

from mmjax.convert import ml4m_vqvae_config as cfgs
from mmjax.convert.ml4m_vqvae_config import ConversionError
from mmjax.convert.ml4m_vqvae_names import entries
from mmjax.convert.ml4m_vqvae_resize import resize_pos_emb
from mmjax.tokenizers.bundle import Tokenizer

SOURCE_FORMAT = "ml4m-vqvae"
INITTED = "quantize._codebook.initted"
_EXPORT_DTYPES = ("float32", "float16", "float64")


def read_safetensors(path) -> tuple[dict, dict]:
    """(numpy tensors, raw string metadata) of a safetensors file, local or gs://."""
    from safetensors.numpy import load

    path = epath.Path(path)
    if not path.exists():
        raise ConversionError(f"checkpoint {path}: no such file")
    data = path.read_bytes()
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        tensors = load(data)
    except Exception as err:  # any parse failure is a bad file
        raise ConversionError(
            f"checkpoint {path}: not a readable safetensors file ({err})"
        ) from err
    return tensors, dict(header.get("__metadata__") or {})


def _nest(flat: dict) -> dict:
    out = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _check_tensors(tensors: dict, table) -> None:
    """Every expected tensor present with its shape, nothing else, all floating point
    (`initted` may be absent: a codebook that was never k-means initialized)."""
    want = {e.name: e.shape for e in table}
    missing = [n for n in want if n not in tensors]
    if missing:
        raise ConversionError(f"missing tensor {missing[0]!r} (expected shape {want[missing[0]]})")
    want[INITTED] = (1,)
    extra = sorted(set(tensors) - set(want))
    if extra:
        shape = tuple(np.shape(tensors[extra[0]]))
        raise ConversionError(f"unexpected tensor {extra[0]!r} of shape {shape}")
    for name, shape in want.items():
        if name not in tensors:
            continue
        got = tuple(np.shape(tensors[name]))
        if got != shape:
            raise ConversionError(f"tensor {name!r} has shape {got}, expected {shape}")
        if not np.issubdtype(np.asarray(tensors[name]).dtype, np.floating):
            raise ConversionError(
                f"tensor {name!r} has dtype {tensors[name].dtype}, expected floating point"
            )


def _table(arch: dict):
    return entries(
        arch["enc"], arch["dec"], arch["latent_dim"], arch["codebook_size"], arch["n_labels"]
    )


def _resize(tensors: dict, arch: dict, resolution: int) -> int:
    """Resizes both position tables (in `tensors`, `arch`) to the grid of `resolution` (the
    bundle's: pixels, or feature-map cells without patch projection); returns the old grid."""
    old = arch["enc"]["grid"]
    for side, what in (("enc", "encoder"), ("dec", "decoder")):
        p = arch[side]["patch_size"]
        if resolution % p or resolution < p:
            raise ConversionError(
                f"resolution {resolution} is not a positive multiple of the {what} patch size {p}"
            )
    grid = resolution // arch["enc"]["patch_size"]
    if grid != resolution // arch["dec"]["patch_size"]:
        raise ConversionError(f"resolution {resolution} gives encoder and decoder different grids")
    for name, side in (("encoder.pos_emb", "enc"), ("decoder.pos_emb", "dec")):
        tensors[name] = resize_pos_emb(tensors[name], grid)
        arch[side]["grid"] = grid
    return old


def convert_ml4m_vqvae(checkpoint, out, config=None, *, resolution=None) -> str:
    """Converts an ml-4m ViT VQ-VAE `.safetensors` file into a Tokenizer bundle at `out`.

    config: the VQVAE constructor arguments as a dict or JSON file; its keys override those
    of the file's metadata. Tiny or custom encoders/decoders (not vit_s/b/l) need
    `enc_num_heads` and `dec_num_heads`. resolution: the bundle's input size (pixels; cells
    of the feature map for feature tokenizers) when it differs from the stored position
    tables' (ml-4m's bicubic resizing is applied once, here; such a bundle does not export).
    Returns the bundle path."""
    tensors, metadata = read_safetensors(checkpoint)
    config = {**cfgs.parse_metadata(metadata), **cfgs.load_config(config)}
    where = f"ml-4m checkpoint {checkpoint}"
    try:
        cfgs.check_supported(config, tensors)
        arch = cfgs.architecture(config, cfgs.shapes_of(tensors))
        _check_tensors(tensors, _table(arch))
        resized_from = None
        stored = arch["enc"]["grid"] * arch["enc"]["patch_size"]
        if resolution is not None and int(resolution) != stored:
            tensors = dict(tensors)
            resized_from = _resize(tensors, arch, int(resolution))
        table = _table(arch)
    except ConversionError as err:
        raise ConversionError(f"{where}: {err}") from None
    flat = {}
    for e in table:
        for path, value in zip(
            e.paths, e.to_mmjax(np.asarray(tensors[e.name], np.float32)), strict=True
        ):
            flat[path] = np.ascontiguousarray(value, np.float32)
    dtypes = {k: str(v.dtype) for k, v in tensors.items() if np.asarray(v).dtype != np.float32}
    source = {
        "format": SOURCE_FORMAT,
        "config": json.loads(json.dumps(config, default=str)),
        "initted": float(np.asarray(tensors.get(INITTED, [1.0])).reshape(-1)[0]),
        "dtypes": dtypes,
    }
    if resized_from is not None:
        source["resized_from_grid"] = resized_from
    return Tokenizer.save(
        out, variables=_nest(flat), source=source, **cfgs.mmjax_configs(arch, config)
    )


def _bundle_arch(meta: dict) -> dict:
    """The ml-4m architecture a Tokenizer bundle's configs describe; refuses what ml-4m's
    VQVAE cannot express, naming the bundle field."""
    model, quant = dict(meta["model"]), dict(meta["quantizer"])
    checks = {
        "model.type": (model.get("type"), "vit"),
        "model.final_norm": (model.get("final_norm", True), False),
        "model.pos_emb": (model.get("pos_emb", "sincos"), "learned"),
        "quantizer.type": (quant.get("type"), "vq"),
        "quantizer.metric": (quant.get("metric", "l2"), "cosine"),
        "quantizer.update": (quant.get("update", "ema"), "ema"),
        "quantizer.codebook_dim": (quant.get("codebook_dim"), None),
        "quantizer.stored_codes_out": (quant.get("stored_codes_out", False), True),
    }
    for field, (got, want) in checks.items():
        if got != want:
            raise ConversionError(f"bundle field {field} is {got!r}; ml-4m's VQVAE needs {want!r}")
    opts = dict(meta.get("modality_options") or {})
    if meta["modality"] == "semseg":
        n_labels, in_ch = opts.get("num_classes", 5), model.get("in_embed_dim")
        if in_ch is None:
            raise ConversionError("bundle field model.in_embed_dim is missing (semseg's cls_emb)")
        out_ch = n_labels
    elif meta["modality"] == "features":
        n_labels, in_ch = None, opts.get("channels", 768)
        out_ch = in_ch
    else:
        raise ConversionError(
            f"bundle field modality is {meta['modality']!r}; ml-4m's VQVAE converts 'semseg' "
            "and 'features' bundles"
        )
    grid = int(meta["grid_shape"][0])
    dec_over = dict(model.get("decoder") or {})

    def side(over: dict, channels: str, count: int) -> dict:
        s = {k: over.get(k, model[k]) for k in ("patch_size", "width", "depth", "heads")}
        s.update(mlp_dim=over.get("mlp_dim", model["mlp_dim"]), grid=grid)
        s.update(post_mlp=bool(model.get("post_mlp", False)), **{channels: count})
        return s

    return {
        "enc": side({}, "in_channels", in_ch), "dec": side(dec_over, "out_channels", out_ch),
        "latent_dim": model["z_dim"], "codebook_size": quant["codebook_size"],
        "n_labels": n_labels,
    }  # fmt: skip


def _default_config(arch: dict) -> dict:
    """VQVAE constructor arguments for a bundle that did not come from ml-4m."""
    enc, dec = arch["enc"], arch["dec"]
    patch_proj = enc["patch_size"] > 1
    p = enc["patch_size"] if patch_proj else 16
    return {
        "image_size": enc["grid"] * p, "n_channels": enc["in_channels"],
        "n_labels": arch["n_labels"], "enc_type": "vit_custom_enc", "dec_type": "vit_custom_dec",
        "enc_num_heads": enc["heads"], "dec_num_heads": dec["heads"], "patch_proj": patch_proj,
        "post_mlp": enc["post_mlp"], "patch_size": p,
        "patch_size_dec": dec["patch_size"] if patch_proj else None, "quant_type": "lucid",
        "codebook_size": arch["codebook_size"], "num_codebooks": 1,
        "latent_dim": arch["latent_dim"], "norm_codes": True, "undo_std": False,
        "out_conv": False,
    }  # fmt: skip


def export_ml4m_vqvae(bundle, out) -> str:
    """Writes a Tokenizer bundle as an ml-4m VQ-VAE `.safetensors` file at `out` (ml-4m's
    tensor names, shapes and, for converted bundles, the original dtypes and config in the
    metadata). Returns the file path."""
    tok = Tokenizer.load(bundle)
    meta = tok.meta
    arch = _bundle_arch(meta)
    source = dict(meta.get("source") or {})
    from_ml4m = source.get("format") == SOURCE_FORMAT
    if "resized_from_grid" in source:
        raise ConversionError(
            f"bundle {bundle}: its position tables were resized from the checkpoint's "
            f"{source['resized_from_grid']}x{source['resized_from_grid']} grid at conversion; "
            "export is only the inverse of a conversion at the stored resolution"
        )
    config = dict(source["config"]) if from_ml4m else _default_config(arch)
    dtypes = dict(source.get("dtypes") or {}) if from_ml4m else {}
    variables = jax.tree.map(np.asarray, jax.device_get(tok.variables))
    tensors = {}
    for e in _table(arch):
        leaves = []
        for path in e.paths:
            node = variables
            for key in path:
                node = node[key]
            leaves.append(node)
        tensors[e.name] = np.ascontiguousarray(e.to_ml4m(*leaves))
    tensors[INITTED] = np.full((1,), source.get("initted", 1.0), np.float32)
    for name, dtype in dtypes.items():
        if dtype not in _EXPORT_DTYPES:
            raise ConversionError(f"tensor {name!r}: cannot write dtype {dtype} with numpy")
        tensors[name] = tensors[name].astype(dtype)
    if cfgs.architecture(config, cfgs.shapes_of(tensors)) != arch:
        raise ConversionError(
            f"bundle {bundle}: its recorded ml-4m config does not describe its weights"
        )
    from safetensors.numpy import save

    data = save(tensors, metadata=cfgs.format_metadata(config))
    path = epath.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)
