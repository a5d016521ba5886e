"""Shared linen layers (attention, MLPs, norms, position embeddings); no data or train code.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`) so that
`mmjax.parallel`'s rules can map it onto the mesh.
"""

from mmjax.nn.attention import MultiHeadAttention, TransformerBlock
from mmjax.nn.kv_attention import KVAttention, update_kv_cache
from mmjax.nn.mlp import Mlp, SwiGLU, dense, layer_norm
from mmjax.nn.position import sincos_1d, sincos_2d

__all__ = [
    "KVAttention",
    "Mlp",
    "MultiHeadAttention",
    "SwiGLU",
    "TransformerBlock",
    "dense",
    "layer_norm",
    "sincos_1d",
    "sincos_2d",
    "update_kv_cache",
]
