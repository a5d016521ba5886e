"""Storage of what users load: model bundles (a JSON of metadata beside the weights)."""

from mmjax.storage.bundle_files import load_bundle, save_bundle

__all__ = ["load_bundle", "save_bundle"]
