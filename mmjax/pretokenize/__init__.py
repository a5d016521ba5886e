"""Pre-tokenization: a data source x Tokenizer bundles -> token ArrayRecords + a manifest
(`python -m mmjax.pretokenize`), and the 4M registry config that a manifest describes."""

from mmjax.pretokenize.registry import registry_config_from_manifest
from mmjax.pretokenize.run import pretokenize

__all__ = ["pretokenize", "registry_config_from_manifest"]
