"""Data: the embedded scenes dataset, sources (scenes, ArrayRecord, TFDS), the Grain
pipeline, and host batch -> global array. Never imports a model."""

from mmjax.data.augment import RandomCropFlip, boxes_from_instance, crop_and_flip
from mmjax.data.global_batch import global_batch
from mmjax.data.pipeline import build_dataset, make_iterator, pipeline_from_config
from mmjax.data.records import ArrayRecordSource, decode_record, encode_record, write_records
from mmjax.data.sources import SOURCES, ScenesSource, TfdsSource, build_source

__all__ = [
    "SOURCES",
    "ArrayRecordSource",
    "RandomCropFlip",
    "ScenesSource",
    "TfdsSource",
    "boxes_from_instance",
    "build_dataset",
    "build_source",
    "crop_and_flip",
    "decode_record",
    "encode_record",
    "global_batch",
    "make_iterator",
    "pipeline_from_config",
    "write_records",
]
