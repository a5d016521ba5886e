"""mmjax: a JAX/Flax stack for discrete multimodal modelling."""

__version__ = "0.1.0"
