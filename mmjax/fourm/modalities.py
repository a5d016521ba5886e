"""The 4M modality registry: which modalities a model reads and writes, and their shapes.

Five kinds:
- `image_tokens`: a grid of discrete tokens from a `Tokenizer` bundle (vocab = its codebook
  size, `grid = (h, w)`); inputs and targets; 2D sin-cos positions.
- `image_tokens_1d`: the K tokens of a flexible-length 1D `Tokenizer` bundle, ordered coarse
  to fine (vocab = its codebook size, `grid = (K,)`: the bundle's grid_shape, so a manifest's
  grid maps through unchanged and `num_tokens` stays the one derived count of every kind;
  `num_tokens=K` is accepted by `build_registry`); inputs and targets; 1D positions. Its
  decoder reads it like a sequence (causal by position; the input at position i is token
  i - 1, or `MASK_INPUT`), so one model generates it with MaskGIT (every decoder input
  `MASK_INPUT`) and left to right with a KV cache (teacher forced, `MASK_INPUT` first).
- `sequence`: text-like token sequences sharing one text vocabulary (caption, boxes, metadata),
  at most `max_length` tokens with the eos a target ends with (records: max_length - 1);
  T5-style span masking; 1D positions.
- `pixels`: raw image patches (`patch_size`, `channels`, `grid` of patches), input only.
- `sequence_embedding`: a sequence of precomputed float vectors of width `embed_dim` (e.g. T5
  caption embeddings, as 4M-21's `t5_caption`), at most `max_length`, input only; 1D positions.
`learned_positions=True` gives a modality a learned position table instead of sin-cos (as
ml-4m's global-token modalities).

Residual-quantized image tokens (`depth` > 1, kind `image_tokens`): an RVQ bundle gives
[h, w, depth] tokens per image. They are flattened depth-first: every (cell, level) is its
own token at position `cell * depth + level` (C order of [h, w, depth]), so the modality
holds h * w * depth tokens; its embedding is the cell's 2D sin-cos (repeated per level) plus
a learned depth embedding `depth_emb_<name>` [depth, D]; token ids share the modality's one
table and head (the depth embedding says which level's codebook an id belongs to). Chosen
over one summed token per cell with `depth` heads because masking, MaskGIT / ROAR and the loss
stay unchanged (a depth token is a token), levels of one cell condition each other through
attention during generation (a summed token would draw its levels independently), and MaskGIT
can fill coarse levels first (`GenerationStep.depth_order`); the price is a depth-times longer
modality, paid out of 4M's token budgets like any other tokens. `depth=1` is the plain grid.

The registry comes from config (`config.modalities`: name -> fields), so new modalities are
added by config, not code. Modality ids are the position in `Registry.names`, sorted by name,
so every process and every checkpoint agrees on them.

The masked batch the model reads (built on the host by `mmjax.fourm.masking`; static shapes,
E = input budget, T = target budget; all int32 unless said):
    enc_tokens [E]          token ids (0 for pixel patches)
    enc_modality [E]        modality id
    enc_positions [E]       index within the modality (grid index row-major, sequence index,
                            or patch index)
    enc_mask [E] bool       True for real input tokens, False for padding
    dec_input_tokens [T]    sequences: the token before the target in the target sequence
                            (teacher forcing); image tokens: 0 (the model uses a mask token);
                            1D image tokens: the token before it, or MASK_INPUT
    dec_target_tokens [T]   the tokens to predict
    dec_modality [T], dec_positions [T], dec_mask [T] bool   as on the encoder side
    pixels_<name> [H, W, C] float32 in [0, 1], one per `pixels` modality
    embeddings_<name> [L, embed_dim] float32, per `sequence_embedding` modality (optional:
                            absent, the modality has no input); its encoder tokens carry
                            the row index into it in enc_tokens
"""

import dataclasses
from collections.abc import Mapping

from mmjax.data.scenes.constants import IMAGE_MODALITIES

KINDS = ("image_tokens", "image_tokens_1d", "sequence", "pixels", "sequence_embedding")
IMAGE_TOKEN_KINDS = ("image_tokens", "image_tokens_1d")
# Decoder input of a 1D image-token target that reads as the mask token: every MaskGIT
# target, and position 0 of a left-to-right pass (no token before it).
MASK_INPUT = -1


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    name: str
    kind: str
    vocab_size: int = 0  # image tokens: codebook size; sequences: text vocabulary size
    grid: tuple[int, ...] | None = None  # image tokens, pixels: (h, w); 1D image tokens: (K,)
    max_length: int = 0  # sequences
    patch_size: int = 0  # pixels
    channels: int = 3  # pixels
    tokenizer: str | None = None  # Tokenizer bundle dir (image tokens) or text tokenizer file
    embed_dim: int = 0  # sequence_embedding: width of the input vectors
    learned_positions: bool = False  # a learned [num_tokens, D] table instead of sin-cos
    depth: int = 1  # image tokens: residual levels per grid cell (RVQ), flattened depth-first

    def __post_init__(self):
        where = f"modality {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("image_tokens", "pixels"):
            if self.grid is not None and len(self.grid) == 1:
                raise ValueError(
                    f"{where}: grid {tuple(self.grid)} has one axis: a 1D token sequence is "
                    f"kind 'image_tokens_1d'"
                )
            if self.grid is None or len(self.grid) != 2 or min(self.grid) < 1:
                raise ValueError(f"{where}: grid must be (h, w) >= 1, got {self.grid!r}")
            object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))
        if self.kind == "image_tokens_1d":
            if self.grid is None or len(self.grid) != 1 or self.grid[0] < 1:
                raise ValueError(
                    f"{where}: a 1D token sequence needs grid=(K,), K >= 1, got {self.grid!r}"
                )
            object.__setattr__(self, "grid", (int(self.grid[0]),))
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"{where}: depth must be an int >= 1, got {self.depth!r}")
        if self.depth > 1 and self.kind != "image_tokens":
            raise ValueError(
                f"{where}: depth {self.depth} > 1 needs kind 'image_tokens', got {self.kind!r}"
            )
        if self.kind in (*IMAGE_TOKEN_KINDS, "sequence") and self.vocab_size < 2:
            raise ValueError(f"{where}: vocab_size must be >= 2, got {self.vocab_size}")
        if self.kind in ("sequence", "sequence_embedding") and self.max_length < 1:
            raise ValueError(f"{where}: max_length must be >= 1, got {self.max_length}")
        if self.kind == "pixels" and (self.patch_size < 1 or self.channels < 1):
            raise ValueError(
                f"{where}: pixels need patch_size >= 1 and channels >= 1, "
                f"got {self.patch_size}, {self.channels}"
            )
        if self.kind == "sequence_embedding" and self.embed_dim < 1:
            raise ValueError(
                f"{where}: sequence_embedding needs embed_dim >= 1, got {self.embed_dim}"
            )

    @property
    def num_tokens(self) -> int:
        """Grid size for images and pixels (times depth), max_length for sequences."""
        if self.kind in ("sequence", "sequence_embedding"):
            return self.max_length
        if self.kind == "image_tokens_1d":
            return self.grid[0]
        return self.grid[0] * self.grid[1] * self.depth

    @property
    def token_shape(self) -> tuple[int, ...] | None:
        """One example's image tokens as a Tokenizer bundle gives them: (h, w), (h, w, depth)
        for residual tokens, (K,) for 1D; None for other kinds."""
        if self.kind not in IMAGE_TOKEN_KINDS:
            return None
        return (*self.grid, self.depth) if self.depth > 1 else self.grid

    def flatten_tokens(self, x, batched: bool, what: str):
        """Image tokens [(B,) *token_shape] or [(B,) num_tokens] -> [(B,) num_tokens] (depth
        tokens depth-first); any other shape raises a ValueError naming `what`."""
        lead = tuple(x.shape[:1]) if batched else ()
        shapes = dict.fromkeys([(self.num_tokens,), self.token_shape])  # ordered, unique
        if x.ndim < len(lead) or tuple(x.shape[len(lead) :]) not in shapes:
            b = "B, " if batched else ""
            want = " or ".join(f"[{b}{', '.join(map(str, s))}]" for s in shapes)
            raise ValueError(f"{what}: image tokens must have shape {want}, got {x.shape}")
        return x.reshape(*lead, self.num_tokens)

    @property
    def is_target(self) -> bool:
        return self.kind in (*IMAGE_TOKEN_KINDS, "sequence")

    @property
    def is_causal(self) -> bool:
        """The decoder reads it left to right: causal attention by position, each input the
        token before (sequences, 1D image tokens)."""
        return self.kind in ("sequence", "image_tokens_1d")

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the raw image for `pixels` modalities."""
        if self.kind != "pixels":
            return None
        return (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)


@dataclasses.dataclass(frozen=True)
class Registry:
    specs: tuple[ModalitySpec, ...]

    def __post_init__(self):
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate modality names in {names}")
        if not self.specs:
            raise ValueError("a modality registry needs at least one modality")
        object.__setattr__(self, "specs", tuple(sorted(self.specs, key=lambda s: s.name)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    def __contains__(self, name) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> ModalitySpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(f"unknown modality {name!r}; the registry has {list(self.names)}")

    def index(self, name: str) -> int:
        return self.names.index(self[name].name)

    @property
    def max_vocab_size(self) -> int:
        return max(s.vocab_size for s in self.specs)

    @property
    def max_num_tokens(self) -> int:
        return max(s.num_tokens for s in self.specs)


def build_registry(config: Mapping) -> Registry:
    """Registry from `config.modalities`-style mapping: name -> dict of ModalitySpec fields."""
    specs = []
    for name, fields in dict(config).items():
        fields = dict(fields)
        if fields.get("kind") == "image_tokens_1d" and "num_tokens" in fields:
            k = fields.pop("num_tokens")
            if fields.get("grid") not in (None, (k,), [k]):
                raise ValueError(
                    f"modality {name!r}: num_tokens {k} and grid {fields['grid']} disagree"
                )
            fields["grid"] = (k,)
        unknown = set(fields) - {f.name for f in dataclasses.fields(ModalitySpec)} - {"name"}
        if unknown:
            raise ValueError(f"modality {name!r}: unknown field(s) {sorted(unknown)}")
        if fields.get("grid") is not None:
            fields["grid"] = tuple(fields["grid"])
        specs.append(ModalitySpec(name=name, **{k: v for k, v in fields.items() if k != "name"}))
    return Registry(tuple(specs))


def fourm7_modalities(
    *,
    image_vocab: int = 1000,
    grid: tuple[int, int] = (8, 8),
    text_vocab: int = 1000,
    resolution: int = 64,
    caption_length: int = 96,
    boxes_length: int = 40,
    metadata_length: int = 16,
    tokenizer_dirs: Mapping[str, str] | None = None,
    text_tokenizer: str | None = None,
) -> dict:
    """A 4M-7-like set for the scenes: rgb pixels (input), tok_rgb/depth/normals/semseg,
    caption, boxes, metadata. Returns the config mapping `build_registry` takes."""
    dirs = dict(tokenizer_dirs or {})
    out = {
        "rgb": dict(kind="pixels", grid=grid, patch_size=resolution // grid[0], channels=3),
        "caption": dict(
            kind="sequence",
            vocab_size=text_vocab,
            max_length=caption_length,
            tokenizer=text_tokenizer,
        ),
        "boxes": dict(
            kind="sequence",
            vocab_size=text_vocab,
            max_length=boxes_length,
            tokenizer=text_tokenizer,
        ),
        "metadata": dict(
            kind="sequence",
            vocab_size=text_vocab,
            max_length=metadata_length,
            tokenizer=text_tokenizer,
        ),
    }
    for m in IMAGE_MODALITIES:
        out[f"tok_{m}"] = dict(
            kind="image_tokens", vocab_size=image_vocab, grid=grid, tokenizer=dirs.get(m)
        )
    return out
