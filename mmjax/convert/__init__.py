"""Checkpoint import and export with other projects: ml-4m's 4M / 4M-21 models (and, through
`ml4m_vqvae`, its tokenizers). `python -m mmjax.convert --help` lists the commands."""

from mmjax.convert.ml4m_batch import batch_from_mod_dict, logits_by_domain
from mmjax.convert.ml4m_fourm import convert_ml4m, export_ml4m

__all__ = ["batch_from_mod_dict", "convert_ml4m", "export_ml4m", "logits_by_domain"]
