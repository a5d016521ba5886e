"""Training: train state, optimizer, Orbax checkpointing, metrics writing, trainers."""

from mmjax.train.checkpoint import Checkpointer, CheckpointError, structure_fingerprint
from mmjax.train.metrics_writer import MetricsWriter

__all__ = ["CheckpointError", "Checkpointer", "MetricsWriter", "structure_fingerprint"]
