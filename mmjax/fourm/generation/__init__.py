"""Chained any-to-any generation with a trained 4M: conditioning, MaskGIT / random-order AR /
AR steps, classifier-free guidance, sampling, and scoring of tokens under a condition."""

from mmjax.fourm.generation.generate import GenerationStep, generate
from mmjax.fourm.generation.scoring import image_token_log_probs

__all__ = ["GenerationStep", "generate", "image_token_log_probs"]
