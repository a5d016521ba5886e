"""What each process of a multi-process job runs to load a Tokenizer bundle onto a mesh over
every process's devices (tests/test_multiprocess.py):

    python -m tests.multiprocess_bundle BUNDLE OUT.npz

Checks that each parameter is sharded as the rules say, encodes and decodes fixed images, and
process 0 writes the tokens, the decoded images and the whole parameters to OUT.npz."""

import sys

import jax
import numpy as np

from mmjax.parallel import create_mesh, maybe_initialize, state_shardings, to_host


def main(bundle: str, out: str):
    maybe_initialize()
    from mmjax.tokenizers import Tokenizer, build_autoencoder

    mesh = create_mesh({"fsdp": -1})
    tok = Tokenizer.load(bundle, mesh=mesh)
    model = build_autoencoder(tok.meta["model"], tok.meta["quantizer"], tok.modality)
    x = jax.ShapeDtypeStruct((1, tok.resolution, tok.resolution, tok.codec.in_channels), "f4")
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    want = jax.tree.leaves(state_shardings(abstract, mesh, tok.rules))
    got = [leaf.sharding for leaf in jax.tree.leaves(tok.variables)]
    assert got == want, (got, want)
    assert not all(leaf.is_fully_addressable for leaf in jax.tree.leaves(tok.variables))
    images = np.random.default_rng(0).random((8, tok.resolution, tok.resolution, 3), np.float32)
    tokens = tok.encode(images)
    decoded = tok.decode(tokens)
    tokens, decoded, variables = to_host((tokens, decoded, tok.variables))
    if jax.process_index() == 0:
        flat = {
            jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(variables)
        }
        np.savez(out, tokens=tokens, decoded=decoded, **flat)
    print(f"process {jax.process_index()}: loaded {bundle} onto {dict(mesh.shape)}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
