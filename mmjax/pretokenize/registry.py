"""The 4M modality registry config of a pre-tokenized directory: what its manifest says
about each modality (vocab, grid, max length, tokenizer bundle), as `build_registry` takes it."""


def registry_config_from_manifest(
    manifest: dict,
    modalities=None,
    *,
    patch_size: int | None = None,
    max_lengths: dict | None = None,
    extra_tokens: int = 1,
) -> dict:
    """The `config.modalities` mapping `mmjax.fourm.build_registry` takes, derived from a
    manifest (`load_manifest(dir)` or `PretokenizedSource(dir).manifest`).

    Image tokens: vocab = codebook size, grid = token grid, tokenizer = bundle dir, and the
    depth of residual [h, w, depth] tokens; 1D image
    tokens (kind image_tokens_1d) the same with grid = (K,).
    Sequences: vocab = text vocabulary size, max_length = the longest record observed plus
    `extra_tokens` (room for the EOS a sequence target ends with) unless `max_lengths`
    names it; a named length shorter than that is refused, as masking would refuse the longest
    record. Pixels: `patch_size` (default: the image side over the token grid's side, so
    pixel patches line up with image tokens; 8 x 8 patches when there are no image tokens).
    """
    mods = manifest["modalities"]
    names = list(mods) if modalities is None else list(modalities)
    max_lengths = dict(max_lengths or {})
    grids = [m["grid"] for m in mods.values() if m["kind"] == "image_tokens"]
    out = {}
    for name in names:
        if name not in mods:
            raise KeyError(f"manifest has no modality {name!r}; it has {sorted(mods)}")
        m = mods[name]
        if m["kind"] == "image_tokens":
            if m.get("scales"):
                raise ValueError(
                    f"manifest modality {name!r} holds multi-scale token pyramids (scales "
                    f"{m['scales']}), which 4M does not read; leave it out of the modalities "
                    "or train configs/nextscale.py on it"
                )
            out[name] = dict(
                kind="image_tokens",
                vocab_size=int(m["vocab_size"]),
                grid=tuple(m["grid"]),
                tokenizer=m["tokenizer"],
            )
            if int(m.get("depth", 1)) > 1:  # residual tokens, flattened depth-first by 4M
                out[name]["depth"] = int(m["depth"])
        elif m["kind"] == "image_tokens_1d":
            out[name] = dict(
                kind="image_tokens_1d",
                vocab_size=int(m["vocab_size"]),
                grid=(int(m["num_tokens"]),),
                tokenizer=m["tokenizer"],
            )
        elif m["kind"] == "sequence":
            longest = int(m["max_length"])
            length = max_lengths.get(name, longest + extra_tokens)
            if int(length) < longest + extra_tokens:
                raise ValueError(
                    f"max_lengths[{name!r}] = {length} is too short for this data: its longest "
                    f"{name!r} record holds {longest} tokens, and a sequence needs "
                    f"{extra_tokens} more position(s) for the eos its target ends with; set it "
                    f">= {longest + extra_tokens}"
                )
            out[name] = dict(
                kind="sequence",
                vocab_size=int(m["vocab_size"]),
                max_length=max(int(length), 1),
                tokenizer=m["tokenizer"],
            )
        elif m["kind"] == "pixels":
            side = int(m["shape"][0])
            p = patch_size or (side // grids[0][0] if grids else max(side // 8, 1))
            if side % p or int(m["shape"][1]) % p:
                raise ValueError(f"pixels {name!r}: patch_size {p} does not divide {m['shape']}")
            out[name] = dict(
                kind="pixels",
                grid=(side // p, int(m["shape"][1]) // p),
                patch_size=p,
                channels=int(m["shape"][2]),
            )
        else:
            raise ValueError(f"manifest modality {name!r} has unknown kind {m['kind']!r}")
    return out
