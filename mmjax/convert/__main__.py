"""`python -m mmjax.convert`: ml-4m checkpoints to mmjax bundles and back.

    python -m mmjax.convert ml4m --checkpoint FILE.safetensors [--config FILE.json] --out DIR
    python -m mmjax.convert to-ml4m --bundle DIR --out FILE.safetensors

`ml4m` reads a 4M / 4M-21 model (-> a 4M bundle) or a VQ-VAE tokenizer (-> a Tokenizer
bundle), told apart by the checkpoint's tensors and config; `to-ml4m` writes either back.
"""

import argparse

from mmjax.cli import run
from mmjax.convert.ml4m_fourm import convert_ml4m, export_ml4m, looks_like_vqvae, read_checkpoint
from mmjax.storage import paths


def _pairs(values) -> dict:
    out = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--tokenizer expects NAME=DIR, got {item!r}")
        out[name] = path
    return out


def import_ml4m(checkpoint, out, config=None, tokenizers=None, text_tokenizer=None) -> str:
    """A 4M model or a VQ-VAE tokenizer checkpoint -> the matching mmjax bundle."""
    state, cfg, _ = read_checkpoint(checkpoint, config)
    if looks_like_vqvae(state, cfg):
        from mmjax.convert.ml4m_vqvae import convert_ml4m_vqvae

        return convert_ml4m_vqvae(checkpoint, out, config=config)
    return convert_ml4m(
        checkpoint, out, config=config, tokenizers=tokenizers, text_tokenizer=text_tokenizer
    )


def export_bundle(bundle, out) -> str:
    """A converted 4M bundle or a Tokenizer bundle -> an ml-4m safetensors file."""
    if paths.exists(paths.join(str(bundle), "fourm.json")) or paths.exists(
        paths.join(str(bundle), "fourm", "fourm.json")
    ):
        return export_ml4m(bundle, out)
    from mmjax.convert.ml4m_vqvae import export_ml4m_vqvae

    return export_ml4m_vqvae(bundle, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.convert",
        description="Converts ml-4m checkpoints (safetensors) to mmjax bundles and back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ml4m", help="an ml-4m 4M / 4M-21 model or VQ-VAE -> an mmjax bundle")
    p.add_argument("--checkpoint", required=True, help="ml-4m .safetensors file")
    p.add_argument("--config", help="JSON config (when the file's metadata has none)")
    p.add_argument("--out", required=True, help="bundle directory to write (local or gs://)")
    p.add_argument(
        "--tokenizer", action="append", metavar="NAME=DIR",
        help="Tokenizer bundle of an image-token modality (repeatable)",
    )  # fmt: skip
    p.add_argument("--text-tokenizer", help="text tokenizer file of the sequence modalities")
    e = sub.add_parser("to-ml4m", help="a converted bundle -> an ml-4m .safetensors file")
    e.add_argument("--bundle", required=True, help="bundle directory")
    e.add_argument("--out", required=True, help=".safetensors file to write")
    args = parser.parse_args(argv)
    if args.command == "ml4m":
        out = import_ml4m(
            args.checkpoint, args.out, config=args.config, tokenizers=_pairs(args.tokenizer),
            text_tokenizer=args.text_tokenizer,
        )  # fmt: skip
    else:
        out = export_bundle(args.bundle, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run(main, "python -m mmjax.convert")
