"""Chained any-to-any generation with a trained `FourM` (4M, Mizrahi et al. 2023, section on
generation; MaskGIT, Chang et al. 2022).

A schedule is a list of `GenerationStep`s, one per target modality, run in order; each
finished target joins the conditioning of the next (e.g. caption -> tok_semseg -> tok_rgb,
or rgb pixels -> tok_depth, tok_normals, tok_semseg, caption, boxes). Per target a scheme:
- `maskgit` (image tokens): `steps` rounds of parallel decoding. Each round the decoder
  predicts every still-masked position, a token is drawn at each, and the most confident
  ones are committed; how many per round follows the cosine or linear token schedule
  (`sampling.commit_counts`: >= 1 per round, all committed after `steps`). Committed tokens
  join the encoder input for the next round, as in 4M.
- `roar` (image tokens): random-order AR, as MaskGIT but the committed subset of each round
  is uniformly random instead of the most confident.
- `ar` (sequences): token by token with a KV cache (encoder once, then
  `FourM.decode_step`); `ar_nocache` reruns the whole decoder each step (same tokens; for
  tests and the benchmark). The decoder starts from the first sentinel `start_id` (the
  whole sequence is one masked span, as in training) and stops per row at `eos_id`.
1D image tokens (coarse to fine) take every scheme: maskgit and roar as image tokens, and
`ar` / `ar_nocache` left to right from token 0, all K tokens (the decoder starts from
`MASK_INPUT`; no eos), through the same KV-cache path as sequences.
Every scheme takes a temperature with a schedule (constant, linear, onex), top-k, top-p and
classifier-free guidance (a scale, or weighted condition subsets; `generation.guidance`).
ml-4m's conventions (its token and temperature schedules, filter order, MaskGIT confidence,
ROAR decoding, guidance variants) are options of `GenerationStep`; `GenerationStep.ml4m`.

On a mesh (`mesh=`): the parameters are sharded by the logical rules, the batch over the data
axes, the KV cache like the activations; the result equals the single-device one (within
float tolerance of the logits, so the same tokens at temperature 0).

Randomness: target `m` uses `fold_in(key, registry.index(m))` and round t folds in t, so a
target's draws depend only on the seed, its name and its inputs: generating it alone from
the same conditioning reproduces its result inside a chain.
"""

import contextlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fourm.generation.conditioning import (
    PAD_ID,
    condition_blocks,
    normalize_conditioning,
    sentinel_variants,
    variant_masks,
)
from mmjax.fourm.generation.generation_step import PARALLEL_SCHEMES, GenerationStep
from mmjax.fourm.generation.guidance import guidance_variants
from mmjax.fourm.generation.ml4m_schedules import (
    ML4M_TOKEN_SCHEDULES,
    ml4m_commit_counts,
    token_fraction_temperatures,
)
from mmjax.fourm.generation.placement import place_batch, place_variables
from mmjax.fourm.generation.sampling import commit_counts, temperature_schedule
from mmjax.fourm.generation.steps import autoregressive, parallel_step
from mmjax.fourm.modalities import MASK_INPUT, Registry
from mmjax.parallel import to_host

# The mmjax text vocabulary (mmjax.text.tokenizer): [PAD] = 0, [EOS] = 1, [S_0] = 4.
EOS_ID, START_ID = 1, 4


def _check_text_ids(name: str, vocab: int, eos_id, start_id) -> None:
    for what, tok in (("eos_id", eos_id), ("start_id", start_id)):
        if tok is not None and not 0 <= tok < vocab:
            raise ValueError(f"{what} {tok} is outside {name!r}'s vocabulary [0, {vocab})")
    if eos_id in (PAD_ID, start_id):
        raise ValueError(f"eos_id {eos_id} must differ from the pad id and start_id {start_id}")


def _plan(registry: Registry, schedule, conditioning: Mapping, known_masks: Mapping, ids) -> list:
    """Checks the schedule against the registry, the conditioning and the text ids `ids`
    (eos_id, start_id) before any compute; returns [(GenerationStep, scheme)]."""
    if isinstance(schedule, GenerationStep | str):
        schedule = [schedule]
    steps = [GenerationStep(s) if isinstance(s, str) else s for s in schedule]
    if not steps:
        raise ValueError("generate: the schedule is empty")
    available, plan, seen = set(conditioning), [], set()
    for step in steps:
        if not isinstance(step, GenerationStep):
            raise ValueError(f"generate: schedule entries must be GenerationStep, got {step!r}")
        name = step.target
        if name not in registry:
            raise ValueError(f"target {name!r} is not in the registry {list(registry.names)}")
        if name in seen:
            raise ValueError(f"target {name!r} appears twice in the schedule")
        spec = registry[name]
        if spec.kind == "pixels":
            raise ValueError(f"target {name!r} is a pixels modality (input only); not generable")
        scheme = step.scheme or ("ar" if spec.kind == "sequence" else "maskgit")
        if spec.kind == "sequence" and scheme in PARALLEL_SCHEMES:
            raise ValueError(f"scheme {scheme!r} needs image tokens; {name!r} is a sequence")
        if spec.kind == "image_tokens" and scheme not in PARALLEL_SCHEMES:
            raise ValueError(f"scheme {scheme!r} needs a sequence; {name!r} is image tokens")
        if scheme in PARALLEL_SCHEMES and step.steps > spec.num_tokens:
            raise ValueError(f"target {name!r}: steps {step.steps} > its {spec.num_tokens} tokens")
        if name in available and spec.kind == "sequence":
            raise ValueError(f"sequence {name!r} is both conditioning and target (no infilling)")
        if name in available and name not in known_masks:
            raise ValueError(
                f"{name!r} is both conditioning and target: pass known_masks[{name!r}] "
                "(True = keep) to complete it, or drop it from the conditioning"
            )
        if spec.kind == "sequence":
            _check_text_ids(name, spec.vocab_size, *ids)
        if step.depth_order != "joint" and spec.depth == 1:
            raise ValueError(
                f"target {name!r}: depth_order {step.depth_order!r} needs residual image "
                "tokens (depth > 1)"
            )
        cond_names = sorted(available - {name})
        guidance_variants(step.guidance, cond_names, name)  # names must be available
        plan.append((step, scheme))
        available.add(name)
        seen.add(name)
    for name in known_masks:
        if name not in seen or name not in conditioning:
            raise ValueError(
                f"known_masks[{name!r}]: it must name a target that is also in the conditioning"
            )
    return plan


def _known_mask(registry: Registry, name: str, mask, batch_size: int) -> jax.Array:
    spec, m = registry[name], np.asarray(mask)
    if spec.kind == "image_tokens_1d":
        if m.dtype != bool or m.shape != (batch_size, spec.num_tokens):
            raise ValueError(
                f"known_masks[{name!r}] must be bool [{batch_size}, {spec.num_tokens}], got "
                f"{m.dtype} {m.shape}"
            )
        return jnp.asarray(m)
    if m.dtype != bool or m.shape[:1] != (batch_size,):
        raise ValueError(
            f"known_masks[{name!r}] must be bool with {batch_size} rows, got {m.dtype} {m.shape}"
        )
    return jnp.asarray(spec.flatten_tokens(m, batched=True, what=f"known_masks[{name!r}]"))


def _schedules(step: GenerationStep, unknown: jax.Array) -> tuple:
    """(commit counts [steps, B] int32, temperatures: [steps] or [steps, B] float32) of a
    maskgit / roar target with `unknown` [B] tokens to generate."""
    if step.token_schedule in ML4M_TOKEN_SCHEDULES:  # host numbers: ml-4m's rounding
        counts = ml4m_commit_counts(to_host(unknown), step.steps, step.token_schedule)
    else:
        counts = to_host(commit_counts(unknown, step.steps, step.token_schedule))
    if step.temperature_decay == "tokens":
        args = (step.temperature, counts, step.temperature_schedule)
        temps = token_fraction_temperatures(*args, step.temperature_min, step.temperature_power)
    else:
        temps = temperature_schedule(step.temperature, step.steps, step.temperature_schedule)
    return counts, temps


def _run_parallel(
    model, variables, registry, step, scheme, blocks, masks, weights, own, key, record=False
):
    """All rounds of a maskgit / roar target. own: None or (tokens, known mask) for editing.
    record: also keep every round's tokens, known mask, draws and their probabilities."""
    spec = registry[step.target]
    b, n = blocks["enc_tokens"].shape[0], spec.num_tokens
    if own is None:
        tokens, known = jnp.zeros((b, n), jnp.int32), jnp.zeros((b, n), bool)
    else:
        tokens, known = jnp.where(own[1], own[0], 0), own[1]
    counts, temps = _schedules(step, n - known.sum(1))
    static = dict(
        model=model,
        modality_id=registry.index(step.target),
        vocab=spec.vocab_size,
        random_order=scheme == "roar",
        filter_first=step.filter_order == "filter_first",
        confidence=step.confidence,
        decode_chosen=step.roar_decode == "chosen",
        with_draws=record,
        coarse_first_depth=spec.depth if step.depth_order == "coarse_first" else 0,
    )
    top_k, top_p = jnp.int32(step.top_k), jnp.float32(step.top_p)
    committed, rounds = [], []
    for t in range(step.steps):
        args = (tokens, known, jnp.asarray(counts[t]), jnp.asarray(temps[t]), top_k, top_p)
        out = parallel_step(
            variables, blocks, masks, weights, *args, jax.random.fold_in(key, t), **static
        )
        tokens, new_known = out[:2]
        committed.append(new_known.sum(1) - known.sum(1))
        known = new_known
        if record:
            rounds.append(out)
    history = {
        "scheduled": np.asarray(counts),
        "committed": to_host(jnp.stack(committed)),
        "all_known": bool(to_host(known.all())),
        "temperatures": temps,
    }
    if record:  # [steps, B, N] each: after the round; draws at the positions decoded
        for i, field in enumerate(("tokens", "known", "drawn", "draw_probs")):
            history[field] = to_host(jnp.stack([r[i] for r in rounds]))
    return tokens, history


def generate(
    model,
    variables,
    registry: Registry,
    conditioning: Mapping,
    schedule: Sequence[GenerationStep | str] | GenerationStep | str,
    key: jax.Array,
    *,
    batch_size: int | None = None,
    known_masks: Mapping | None = None,
    eos_id: int | None = EOS_ID,
    start_id: int = START_ID,
    return_history: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
):
    """Generates the targets of `schedule` in order, each conditioned on `conditioning` and
    on the targets before it.

    conditioning: name -> image tokens [B, h*w] / [B, h, w] int, sequences [B, n] int padded
      with 0 (or a list of token lists), pixels [B, H, W, C] float in [0, 1] (or uint8).
    known_masks: name -> bool [B, h*w] for editing an image-token modality that is in both
      the conditioning and the schedule: True positions keep their tokens (and are encoder
      input), False positions are generated. With "ar" / "ar_nocache" on a 1D image-token
      target, the True tokens are fed to the decoder in place of draws (continuing a known
      prefix); the target is then not encoder input.
    eos_id: a sequence ends at its first eos (None: always max_length tokens); start_id: the
      first decoder input of a sequence (the sentinel S_0).
    mesh: run on this device mesh: `variables` sharded by the logical axis `rules` (default:
      the model's sharding_rules, else mmjax.parallel.DEFAULT_RULES), the batch over the
      data axes (replicated where B does not divide them); the outputs are global arrays
      on the mesh. Every process of a multi-process run passes the whole conditioning.
    Returns name -> array for the conditioning (in the checked form) and every target: image
    tokens int32 [B, h*w] (1D: [B, K]; residual, depth > 1: [B, h, w, depth], what the
    Tokenizer bundle decodes); sequences int32 [B, max_length], the eos and all
    after it 0 (so the output can be fed back as conditioning). With return_history, also a dict
    target -> per-target diagnostics (maskgit / roar: 'scheduled' and 'committed' counts
    [steps, B], 'all_known', 'temperatures', and per round [steps, B, N] the 'tokens' and
    'known' mask after it, the tokens 'drawn' and their 'draw_probs' under the tempered,
    filtered distribution (valid where the round decoded); ar: 'steps_run'; all:
    'conditioning', 'variants', 'weights').
    """
    known_masks = dict(known_masks or {})
    out, b = normalize_conditioning(registry, conditioning, batch_size)
    plan = _plan(registry, schedule, out, known_masks, (eos_id, start_id))
    known_masks = {n: _known_mask(registry, n, m, b) for n, m in known_masks.items()}
    on_mesh = contextlib.nullcontext()
    if mesh is not None:
        model, variables = place_variables(model, variables, mesh, rules)
        out, known_masks = place_batch((out, known_masks), mesh, model.sharding_rules)
        on_mesh = jax.set_mesh(mesh)
    with on_mesh:
        args = (model, variables, registry, plan, out, known_masks, key, b, eos_id, start_id)
        history = _run_plan(*args, record=return_history)
    for name in out:  # residual tokens as their bundle gives them: [B, h, w, depth]
        if registry[name].depth > 1:
            out[name] = out[name].reshape(b, *registry[name].token_shape)
    return (out, history) if return_history else out


def _guidance_inputs(registry, step, out, names, original, b, start_id):
    """(blocks, masks [K, B, Ec], variants, weights) of one target's guidance variants: with
    guidance_grow_conditioning off, targets generated earlier stay in every variant; with
    guidance_text_sentinel, a dropped sequence condition reads as one start sentinel."""
    droppable = names if step.guidance_grow_conditioning else [n for n in names if n in original]
    kept = [n for n in names if n not in droppable]
    scale = isinstance(step.guidance, float)
    variants, weights = guidance_variants(step.guidance, droppable if scale else names, step.target)
    if kept:
        variants = tuple(tuple(n for n in names if n in v or n in kept) for v in variants)
    blocks = condition_blocks(registry, out, names, b)
    block = blocks.pop("block")
    masks = variant_masks(blocks.pop("enc_mask"), block, names, variants)
    if step.guidance_text_sentinel and len(variants) > 1:
        sequences = [n for n in names if registry[n].kind == "sequence"]
        args = (blocks["enc_tokens"], masks, block, names, variants, sequences, start_id)
        blocks["variant_tokens"], masks = sentinel_variants(*args)
    return blocks, masks, variants, jnp.asarray(weights)


def _run_plan(
    model, variables, registry, plan, out, known_masks, key, b, eos_id, start_id, record=False
):
    """Runs the checked plan, adding each target to `out`; returns the history."""
    history, original = {}, set(out)
    for step, scheme in plan:
        name, spec = step.target, registry[step.target]
        names = [n for n in registry.names if n in out and n != name]
        blocks, masks, variants, weights = _guidance_inputs(
            registry, step, out, names, original, b, start_id
        )
        tkey = jax.random.fold_in(key, registry.index(name))
        if scheme in PARALLEL_SCHEMES:
            own = (out[name], known_masks[name]) if name in known_masks else None
            args = (model, variables, registry, step, scheme, blocks, masks, weights, own, tkey)
            tokens, info = _run_parallel(*args, record=record)
        else:
            length = spec.num_tokens  # sequences: max_length; 1D image tokens: K
            if step.temperature_decay == "tokens":  # ml-4m: ar runs at one temperature
                temps = np.full(length, step.temperature, np.float32)
            else:
                temps = temperature_schedule(step.temperature, length, step.temperature_schedule)
            text = spec.kind == "sequence"  # 1D image tokens: from MASK_INPUT, no eos
            first = start_id if text else MASK_INPUT
            stop = (-1 if eos_id is None else eos_id) if text else -1
            if name in known_masks:  # 1D image tokens continued from the known ones
                forced = (out[name], known_masks[name])
            else:
                forced = (jnp.zeros((b, length), jnp.int32), jnp.zeros((b, length), bool))
            tokens, steps_run = autoregressive(
                variables, blocks, masks, weights, jnp.asarray(temps), jnp.int32(step.top_k),
                jnp.float32(step.top_p), tkey, jnp.int32(first), jnp.int32(stop),
                jnp.asarray(forced[0], jnp.int32), forced[1], model=model,
                modality_id=registry.index(name), vocab=spec.vocab_size,
                use_cache=scheme == "ar",
                suppress=tuple(sorted({PAD_ID, start_id})) if text else (),
                filter_first=step.filter_order == "filter_first",
            )  # fmt: skip
            info = {"steps_run": int(to_host(steps_run)), "temperatures": temps}
        out[name] = tokens
        history[name] = info | {
            "scheme": scheme,
            "conditioning": tuple(names),
            "variants": variants,
            "weights": np.asarray(weights),
        }
    return history
