"""Data: the embedded scenes dataset, sources (scenes, image folders, ArrayRecord, TFDS) and
their train / validation parts, resize-and-crop, the Grain pipeline, pre-tokenized data for
4M (`python -m mmjax.pretokenize` writes it, `PretokenizedSource` reads it),
and host batch -> global array. Never imports a model."""

from mmjax.data.augment import RandomCropFlip, boxes_from_instance, crop_and_flip
from mmjax.data.image_folder import BadImageError, ImageFolderSource, decode_image
from mmjax.data.pipeline import build_dataset, eval_dataset, make_iterator, pipeline_from_config
from mmjax.data.pretokenized import PretokenizedSource, load_manifest
from mmjax.data.records import ArrayRecordSource, decode_record, encode_record, write_records
from mmjax.data.resize import ResizeCrop, center_crop_resize
from mmjax.data.sources import (
    SOURCES,
    ScenesSource,
    TfdsSource,
    build_source,
    build_validation_source,
    describe_source,
)
from mmjax.data.text_vocab import METADATA_RANGES, scene_text_tokens, scenes_text_tokenizer
from mmjax.data.views import ViewsSource, view_params

__all__ = [
    "METADATA_RANGES",
    "SOURCES",
    "ArrayRecordSource",
    "BadImageError",
    "ImageFolderSource",
    "PretokenizedSource",
    "RandomCropFlip",
    "ResizeCrop",
    "ScenesSource",
    "TfdsSource",
    "ViewsSource",
    "boxes_from_instance",
    "build_dataset",
    "build_source",
    "build_validation_source",
    "center_crop_resize",
    "crop_and_flip",
    "decode_image",
    "decode_record",
    "describe_source",
    "encode_record",
    "eval_dataset",
    "load_manifest",
    "make_iterator",
    "pipeline_from_config",
    "scene_text_tokens",
    "scenes_text_tokenizer",
    "view_params",
    "write_records",
]
