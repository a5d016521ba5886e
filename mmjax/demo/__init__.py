"""`python -m mmjax.demo [--quick]`: mmjax end to end on the embedded scenes, on a CPU.

Trains the rgb, depth, normals and semseg tokenizers, pre-tokenizes train and validation
scenes (plus captions, boxes and metadata through the text tokenizer), trains a tiny 4M
model on all of them, then generates rgb -> semseg, normals, depth, caption, boxes;
caption -> semseg -> rgb; and half an image + its caption -> the whole image. Writes a PNG
grid per task and `metrics.json` (generated vs. trivial baselines vs. the tokenizer ceiling)
into the workdir. Every stage resumes: re-running the command skips what is done.
"""

from mmjax.demo.run import run_demo

__all__ = ["run_demo"]
