"""The demo's generation tasks on validation scenes, scored against the scenes' exact ground
truth and against trivial baselines, with a PNG grid per task:

- rgb -> semseg, normals, depth, caption, boxes, each from the rgb alone. Not chained: the
  demo's 4M is trained with 64 input tokens, and chained, each later target would read more
  inputs than it ever saw (docs/experiments.md, "Demo tasks"). Chaining is caption -> rgb's;
- caption -> semseg -> rgb (sampled, temperature 1, caption guidance 3 for semseg and 2 for rgb:
  a caption says what, not where, so greedy decoding draws the empty floor), plus the
  log-probability of the true rgb tokens given the scene's caption against another scene's
  caption (does the model read the caption?);
- caption -> rgb directly (no semseg between): MaskGIT, and for 1D rgb tokens also AR left to
  right with the KV cache, scored by colour presence as caption -> semseg -> rgb is, so 2D and
  1D rgb tokens can be compared at the same 4M training compute;
- editing: the left half of the rgb tokens plus the caption -> the right half. With 1D rgb
  tokens (coarse to fine, no left half) the task is adapted: the first half of the tokens plus
  the caption -> the rest, scored on the whole image against decoding the known prefix alone.

Every metric comes with a baseline that sees no input (mean depth / normals maps, per-pixel
majority class, the most frequent objects as a caption, another scene's boxes, the mean
image) and, for image modalities, the tokenizer ceiling (ground-truth tokens decoded).
"""

import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from mmjax.data import scenes
from mmjax.data.text_vocab import CLASS_WORDS, COLOR_WORDS
from mmjax.eval import save_image_grid, to_rgb
from mmjax.eval import scenes as metrics
from mmjax.eval.image_metrics import psnr
from mmjax.fourm import GenerationStep, generate


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if np.isscalar(rows[0][k])}


def _text(text_tok, ids) -> str:
    ids = np.asarray(ids)
    return text_tok.decode(ids[ids > 0])


def _boxes(text_tok, ids, resolution: int):
    """(boxes, classes, colours) parsed from a generated sequence; a malformed sequence gives
    no boxes, and a box with x_min > x_max or y_min > y_max is dropped (it is no box)."""
    ids = np.asarray(ids)
    try:
        boxes, classes, colours = scenes_boxes(text_tok, ids[ids > 0], resolution)
    except ValueError:
        empty = np.zeros((0,), np.int32)
        return np.zeros((0, 4), np.int32), empty, empty
    boxes = np.asarray(boxes).reshape(-1, 4)
    keep = (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])
    return boxes[keep], np.asarray(classes)[keep], np.asarray(colours)[keep]


def scenes_boxes(text_tok, ids, resolution: int):
    from mmjax.text import tokens_to_scene_boxes

    return tokens_to_scene_boxes(
        text_tok, ids, class_words=CLASS_WORDS, color_words=COLOR_WORDS, image_size=resolution
    )


def draw_boxes(image, boxes, colours) -> np.ndarray:
    """rgb [H, W, 3] in [0, 1], dimmed to gray, with each box outlined (1 px, on its inclusive
    border pixels) in its object's colour: drawn at full resolution so that the grid's
    nearest-neighbour upscaling keeps the outlines solid."""
    gray = np.clip(image, 0, 1).mean(-1, keepdims=True) * 0.5 + 0.1
    im = Image.fromarray((np.repeat(gray, 3, -1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for box, c in zip(boxes, colours, strict=False):
        if box[0] < 0:
            continue
        rgb = scenes.COLOR_RGB[int(c)] if 0 <= c < len(scenes.COLOR_RGB) else (1.0, 1.0, 1.0)
        draw.rectangle(tuple(int(v) for v in box), outline=tuple(int(255 * v) for v in rgb))
    return np.asarray(im, np.float32) / 255.0


class Tasks:
    """Generation with one 4M bundle and its tokenizers on the first validation scenes."""

    def __init__(self, fourm_bundle: str, tokenizer_dirs: dict, data: dict, plan, seed: int = 0):
        from mmjax.data.pretokenized import PretokenizedSource
        from mmjax.fourm.bundle import load_fourm
        from mmjax.text import TextTokenizer
        from mmjax.tokenizers import Tokenizer

        self.model, self.variables, self.registry, meta = load_fourm(fourm_bundle)
        self.toks = {m: Tokenizer.load(d) for m, d in tokenizer_dirs.items()}
        self.text = TextTokenizer.load(meta["text_tokenizer"])
        self.plan, self.key = plan, jax.random.key(seed)
        r, n = plan.resolution, plan.eval_scenes
        self.truth = [scenes.generate(i, "validation", r) for i in range(n)]
        source = PretokenizedSource(data["validation"])
        self.records = [source[i] for i in range(n)]
        self.train = [scenes.generate(i, "train", r) for i in range(256)]
        self.one_d = self.registry["tok_rgb"].kind == "image_tokens_1d"

    def _stack(self, name: str) -> np.ndarray:
        spec = self.registry[name]
        if spec.kind == "sequence":
            rows = [np.asarray(r[name])[: spec.max_length - 1] for r in self.records]
            return [list(map(int, row)) for row in rows]
        return np.stack([np.asarray(r[name]) for r in self.records])

    def _decode(self, modality: str, tokens) -> np.ndarray:
        """Images of tokens [B, h*w] / [B, h, w], or of 1D tokens [B, k] (any prefix)."""
        tok, tokens = self.toks[modality], np.asarray(tokens)
        if tok.max_tokens is not None:
            return np.asarray(tok.decode(tokens.reshape(len(tokens), -1)))
        return np.asarray(tok.decode(tokens.reshape(-1, *tok.grid_shape)))

    def _presence(self, images, shift: int = 0) -> float:
        """Mean fraction of the colours named by scene (i + shift)'s caption present in
        image i (`eval.scenes.colour_presence`): shift 0 the true caption, 1 another's."""
        n = len(self.truth)
        colours = [{c for c, _ in metrics.visible_objects(t)} for t in self.truth]
        return float(
            np.mean(
                [
                    metrics.colour_presence(images[i], colours[(i + shift) % n])["fraction"]
                    for i in range(n)
                ]
            )
        )

    def _image_step(
        self, target: str, temperature: float = 0.0, guidance: float = 1.0
    ) -> GenerationStep:
        return GenerationStep(
            target, scheme="maskgit", steps=self.plan.maskgit_steps, temperature=temperature,
            guidance=guidance,
        )  # fmt: skip

    # -- the tokenizers: ground truth next to its pre-tokenized codes, decoded ----------
    def reconstructions(self, out_dir: str) -> str:
        """A grid of each image modality and its tokenizer reconstruction (the ceiling of
        every generated image) on the first validation scenes; returns its path."""
        n = min(len(self.truth), 8)
        decoded = {m: self._decode(m, self._stack(f"tok_{m}"))[:n] for m in self.toks}
        rows = [
            [to_rgb(m, x) for m in decoded for x in (self.truth[i][m], decoded[m][i])]
            for i in range(n)
        ]
        columns = [f"{m} {kind}" for m in decoded for kind in ("truth", "tokenized")]
        path = os.path.join(out_dir, "tokenizers.png")
        return save_image_grid(rows, path, scale=3, columns=columns)

    # -- rgb -> semseg, normals, depth, caption, boxes ----------------------------------
    def rgb_to_all(self, out_dir: str) -> dict:
        truth, n, r = self.truth, len(self.truth), self.plan.resolution
        schedule = [
            self._image_step("tok_semseg"),
            self._image_step("tok_normals"),
            self._image_step("tok_depth"),
            GenerationStep("caption", scheme="ar", temperature=0.0),
            GenerationStep("boxes", scheme="ar", temperature=0.0),
        ]
        cond = {"rgb": np.stack([t["rgb"] for t in truth])}
        out = {}  # each target from rgb alone, not chained (see the module docstring)
        for step in schedule:
            out |= generate(self.model, self.variables, self.registry, cond, [step], self.key)
        gen = {m: self._decode(m, out[f"tok_{m}"]) for m in ("depth", "normals", "semseg")}
        ceiling = {m: self._decode(m, self._stack(f"tok_{m}")) for m in gen}
        base = {
            "depth": metrics.mean_depth_baseline([t["depth"] for t in self.train]),
            "normals": metrics.mean_normals_baseline([t["normals"] for t in self.train]),
            "semseg": metrics.majority_class_baseline([t["semseg"] for t in self.train]),
        }
        score = {
            "depth": metrics.depth_errors,
            "normals": metrics.normals_angular_error,
            "semseg": metrics.semseg_miou,
        }
        results = {}
        for m, fn in score.items():
            results[m] = {
                "generated": _mean([fn(gen[m][i], truth[i][m]) for i in range(n)]),
                "baseline": _mean([fn(base[m], truth[i][m]) for i in range(n)]),
                "tokenizer_ceiling": _mean([fn(ceiling[m][i], truth[i][m]) for i in range(n)]),
            }
        captions = [_text(self.text, row) for row in np.asarray(out["caption"])]
        objects = [metrics.visible_objects(t) for t in truth]
        chance = metrics.frequent_objects_caption_baseline(
            [metrics.visible_objects(t) for t in self.train]
        )
        results["caption"] = {
            "generated": _mean(
                [
                    metrics.caption_recall_precision(c, o)
                    for c, o in zip(captions, objects, strict=True)
                ]
            ),
            "baseline": _mean([metrics.caption_recall_precision(chance, o) for o in objects]),
            "examples": [
                {"generated": c, "truth": str(t["caption"])}
                for c, t in zip(captions[:4], truth[:4], strict=True)
            ],
        }
        boxes = [_boxes(self.text, row, r) for row in np.asarray(out["boxes"])]
        results["boxes"] = {
            "generated": _mean(
                [
                    metrics.box_iou_match(b[0], t["boxes"], b[1], t["box_class"])
                    for b, t in zip(boxes, truth, strict=True)
                ]
            ),
            "baseline": _mean(  # another scene's boxes
                [
                    metrics.box_iou_match(
                        other["boxes"], t["boxes"], other["box_class"], t["box_class"]
                    )
                    for t, other in zip(truth, truth[1:] + truth[:1], strict=True)
                ]
            ),
        }
        rows = []
        for i in range(min(n, 8)):
            t = truth[i]
            rows.append(
                [t["rgb"]]
                + [x for m in gen for x in (to_rgb(m, t[m]), to_rgb(m, gen[m][i]))]
                + [
                    draw_boxes(t["rgb"], t["boxes"], t["box_color"]),
                    draw_boxes(t["rgb"], boxes[i][0], boxes[i][2]),
                ]
            )
        columns = ["rgb (input)"]
        for m in gen:
            columns += [f"{m} truth", f"{m} generated"]
        columns += ["boxes truth", "boxes generated"]
        notes = [f"generated caption: {c}" for c in captions[: len(rows)]]
        save_image_grid(
            rows, os.path.join(out_dir, "rgb_to_all.png"), scale=3, columns=columns, notes=notes
        )
        return results

    # -- caption -> semseg -> rgb -------------------------------------------------------
    def caption_to_rgb(self, out_dir: str) -> dict:
        truth, n = self.truth, len(self.truth)
        # sampled, with guidance: greedy decoding from a caption (which names objects but not
        # where they are) commits the most likely token everywhere, the empty floor
        schedule = [
            self._image_step("tok_semseg", temperature=1.0, guidance=3.0),
            self._image_step("tok_rgb", temperature=1.0, guidance=2.0),
        ]
        cond = {"caption": self._stack("caption")}
        out = generate(self.model, self.variables, self.registry, cond, schedule, self.key)
        rgb = self._decode("rgb", out["tok_rgb"])
        semseg = self._decode("semseg", out["tok_semseg"])
        mean_image = metrics.mean_image_baseline([t["rgb"] for t in self.train])
        presence = self._presence
        results = {
            **self._caption_usage(),
            "colour_presence": presence(rgb),
            "baseline_mean_image": presence([mean_image] * n),
            "other_scenes_colours": presence(rgb, shift=1),
            "tokenizer_ceiling": presence(self._decode("rgb", self._stack("tok_rgb"))),
            "semseg_miou_vs_truth": _mean(
                [metrics.semseg_miou(semseg[i], truth[i]["semseg"]) for i in range(n)]
            )["miou"],
        }
        rows = [
            [
                truth[i]["rgb"],
                to_rgb("semseg", truth[i]["semseg"]),
                to_rgb("semseg", semseg[i]),
                rgb[i],
            ]
            for i in range(min(n, 8))
        ]
        save_image_grid(
            rows, os.path.join(out_dir, "caption_to_rgb.png"), scale=3,
            columns=["rgb truth", "semseg truth", "semseg generated", "rgb generated"],
            notes=[f"caption (input): {t['caption']}" for t in truth[: len(rows)]],
        )  # fmt: skip
        return results

    def _caption_usage(self) -> dict:
        """Mean log-probability (nats) of the true tok_rgb tokens under the 4M, every rgb
        token masked, given the scene's caption and given the next scene's caption; on the
        object tokens (more than a quarter of the token's pixels are an object) and on all
        (1D rgb tokens have no pixels of their own: all only). No sampling: how much the
        model reads from the caption about what to draw."""
        from mmjax.fourm.generation.scoring import image_token_log_probs

        n, tokens = len(self.truth), self._stack("tok_rgb")
        objects = None
        if not self.one_d:
            h, w = self.toks["rgb"].grid_shape
            r = self.plan.resolution
            objects = np.stack(
                [
                    (t["semseg"] >= 2).reshape(h, r // h, w, r // w).mean((1, 3)) > 0.25
                    for t in self.truth
                ]
            ).reshape(n, h * w)
        captions = self._stack("caption")
        out = {"rgb_logp_uniform": -float(np.log(self.registry["tok_rgb"].vocab_size))}
        for label, caps in (
            ("caption", captions),
            ("another_caption", captions[1:] + captions[:1]),
        ):
            logp = image_token_log_probs(
                self.model, self.variables, self.registry, {"caption": caps}, "tok_rgb", tokens
            )
            if objects is not None:
                out[f"rgb_logp_objects_{label}"] = float(logp[objects].mean())
            out[f"rgb_logp_all_{label}"] = float(logp.mean())
        return out

    # -- caption -> rgb, directly -------------------------------------------------------
    def caption_to_rgb_direct(self, out_dir: str) -> dict:
        """tok_rgb from the caption alone in one generation step (sampled, temperature 1,
        caption guidance 2, as caption_to_rgb's rgb step): MaskGIT, and for 1D rgb tokens
        also AR left to right (KV cache); each scored by the colours of the scene's caption
        present in the image and, as a control, those of the next scene's caption."""
        truth, n = self.truth, len(self.truth)
        cond = {"caption": self._stack("caption")}
        schemes = ("maskgit", "ar") if self.one_d else ("maskgit",)
        results, images = {}, {}
        for scheme in schemes:
            step = GenerationStep(
                "tok_rgb", scheme=scheme, steps=self.plan.maskgit_steps, temperature=1.0,
                guidance=2.0,
            )  # fmt: skip
            out = generate(self.model, self.variables, self.registry, cond, [step], self.key)
            images[scheme] = self._decode("rgb", out["tok_rgb"])
            results[scheme] = {
                "colour_presence": self._presence(images[scheme]),
                "other_scenes_colours": self._presence(images[scheme], shift=1),
            }
        mean_image = metrics.mean_image_baseline([t["rgb"] for t in self.train])
        results["baseline_mean_image"] = self._presence([mean_image] * n)
        results["tokenizer_ceiling"] = self._presence(self._decode("rgb", self._stack("tok_rgb")))
        results["rgb_tokens"] = "1d" if self.one_d else "2d"
        rows = [[truth[i]["rgb"], *(images[s][i] for s in schemes)] for i in range(min(n, 8))]
        save_image_grid(
            rows, os.path.join(out_dir, "caption_to_rgb_direct.png"), scale=3,
            columns=["rgb truth", *(f"rgb generated ({s})" for s in schemes)],
            notes=[f"caption (input): {t['caption']}" for t in truth[: len(rows)]],
        )  # fmt: skip
        return results

    # -- editing: half an image + the caption -> the other half -------------------------
    def _complete_rgb(self, tokens: np.ndarray, known: np.ndarray):
        """rgb tokens with the unknown ones generated from the known ones and the caption
        (MaskGIT, temperature 1); the known tokens must come back unchanged."""
        cond = {"tok_rgb": tokens, "caption": self._stack("caption")}
        out = generate(
            self.model, self.variables, self.registry, cond,
            [self._image_step("tok_rgb", 1.0)], self.key, known_masks={"tok_rgb": known},
        )  # fmt: skip
        if not np.array_equal(np.asarray(out["tok_rgb"])[known], tokens[known]):
            raise RuntimeError("completion overwrote known rgb tokens (generate's known_masks)")
        return out["tok_rgb"]

    def complete_image(self, out_dir: str) -> dict:
        if self.one_d:
            return self._complete_1d(out_dir)
        truth, n = self.truth, len(self.truth)
        h, w = self.toks["rgb"].grid_shape
        tokens = self._stack("tok_rgb").reshape(n, h * w)
        known = np.tile((np.arange(h * w) % w < w // 2)[None], (n, 1))
        rgb = self._decode("rgb", self._complete_rgb(tokens, known))
        ceiling = self._decode("rgb", tokens)
        mean_image = metrics.mean_image_baseline([t["rgb"] for t in self.train])
        right = slice(self.plan.resolution // 2, None)

        def score(images):
            return float(
                np.mean([psnr(images[i][:, right], truth[i]["rgb"][:, right]) for i in range(n)])
            )

        results = {
            "psnr_right_half": score(rgb),
            "baseline_mean_image": score([mean_image] * n),
            "tokenizer_ceiling": score(ceiling),
        }
        rows = []
        for i in range(min(n, 8)):
            masked = truth[i]["rgb"].copy()
            masked[:, right] = 0.5
            rows.append([masked, truth[i]["rgb"], rgb[i]])
        save_image_grid(
            rows, os.path.join(out_dir, "complete_image.png"), scale=3,
            columns=["left half (input)", "truth", "completed"],
            notes=[f"caption (input): {t['caption']}" for t in truth[: len(rows)]],
        )  # fmt: skip
        return results

    def _complete_1d(self, out_dir: str) -> dict:
        """complete_image for 1D rgb tokens: the first half of the K tokens (the coarse
        ones) plus the caption -> the rest (MaskGIT, temperature 1), scored by PSNR on the
        whole image; the known prefix decoded alone is the baseline to beat."""
        truth, n = self.truth, len(self.truth)
        tokens = self._stack("tok_rgb")
        k = tokens.shape[1] // 2
        known = np.zeros(tokens.shape, bool)
        known[:, :k] = True
        rgb = self._decode("rgb", self._complete_rgb(tokens, known))
        prefix = self._decode("rgb", tokens[:, :k])
        mean_image = metrics.mean_image_baseline([t["rgb"] for t in self.train])

        def score(images):
            return float(np.mean([psnr(images[i], truth[i]["rgb"]) for i in range(n)]))

        results = {
            "known_tokens": k,
            "psnr_completed": score(rgb),
            "prefix_only": score(prefix),
            "baseline_mean_image": score([mean_image] * n),
            "tokenizer_ceiling": score(self._decode("rgb", tokens)),
        }
        rows = [[prefix[i], truth[i]["rgb"], rgb[i]] for i in range(min(n, 8))]
        save_image_grid(
            rows, os.path.join(out_dir, "complete_image.png"), scale=3,
            columns=[f"first {k} tokens (input)", "truth", "completed"],
            notes=[f"caption (input): {t['caption']}" for t in truth[: len(rows)]],
        )  # fmt: skip
        return results
