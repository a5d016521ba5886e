"""Storage of what users load: model bundles (Orbax checkpoints beside a JSON of metadata),
local or on gs://."""

from mmjax.storage.bundles import load_bundle, read_meta, save_bundle
from mmjax.storage.paths import StorageError

__all__ = ["StorageError", "load_bundle", "read_meta", "save_bundle"]
