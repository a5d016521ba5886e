"""TFDS datasets by name (`data.source=tfds`, `tfds_name`, `split`, `image_key`): TFDS's own
mock data, and a small real builder prepared here in ArrayRecord format without TensorFlow
(its generator yields encoded PNG bytes, which TFDS stores as they are). Images of any size
are resized like image folders; hold-out and explicit validation splits; pre-tokenization."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import build_source, center_crop_resize, eval_dataset, pipeline_from_config

R = 16
SIZES = [(20, 31), (40, 17), (16, 16), (55, 60), (23, 23), (9, 12), (33, 41), (18, 50)]


def _image(k: int) -> np.ndarray:
    h, w = SIZES[k % len(SIZES)]
    return np.random.default_rng(k).integers(0, 256, (h, w, 3), np.uint8)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class MmjaxTinyPhotos(tfds.core.GeneratorBasedBuilder):
    """Images of assorted sizes with their index; train: 12, test: 4."""

    VERSION = tfds.core.Version("1.0.0")
    # A one-part module name: TFDS then looks for no checksums file next to the code (its
    # lookup inside a package needs the importlib_resources backport).
    __module__ = "mmjax_tiny_photos"

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(None, None, 3)), "index": np.int64}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(range(12)),
            "test": self._generate_examples(range(100, 104)),
        }

    def _generate_examples(self, indices):
        for k in indices:
            yield k, {"image": _png(_image(k)), "index": k}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    MmjaxTinyPhotos(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def _config(data_dir, **kw):
    base = dict(
        source="tfds", tfds_name="mmjax_tiny_photos", data_dir=data_dir, split="train",
        image_key="image", resolution=R, batch_size=4, validation_fraction=0.0,
    )  # fmt: skip
    return {**base, **kw}


def test_real_builder_reads_images_of_any_size_and_its_splits(data_dir):
    train = build_source(_config(data_dir, keys={"index": "index"}))
    assert len(train) == 12
    for i in range(12):  # TFDS shuffles at preparation: match by the stored index
        item = train[i]
        want = _image(int(item["index"])) / np.float32(255.0)
        assert item["rgb"].dtype == np.float32
        np.testing.assert_array_equal(item["rgb"], want)
    # an explicit validation split, at the evaluation crop
    config = _config(data_dir, eval_split="test", keys={"index": "index"})
    ev = eval_dataset(config, "validation")
    assert len(ev) == 4
    for i in range(4):
        item = ev[i]
        want = center_crop_resize(_image(int(item["index"])) / np.float32(255.0), R)
        np.testing.assert_allclose(item["rgb"], want, atol=1e-6)
    # no eval_split: part of `split` is held out by index hash, disjoint from training
    held = _config(data_dir, validation_fraction=0.3, keys={"index": "index"})
    t, v = build_source(held, "train"), build_source(held, "validation")
    ti = {int(t[i]["index"]) for i in range(len(t))}
    vi = {int(v[i]["index"]) for i in range(len(v))}
    assert ti.isdisjoint(vi) and ti | vi == set(range(12)) and 1 <= len(vi) <= 8
    # training batches: random resized crops to R x R, the same for the same seed
    a = next(pipeline_from_config(_config(data_dir), 0, 1))["rgb"]
    b = next(pipeline_from_config(_config(data_dir), 0, 1))["rgb"]
    assert a.shape == (4, R, R, 3)
    np.testing.assert_array_equal(a, b)


def test_bad_names_and_features_are_named(data_dir):
    with pytest.raises(ValueError, match=r"TFDS dataset 'no_such_dataset_xyz' split 'train'"):
        build_source(_config(data_dir, tfds_name="no_such_dataset_xyz"))
    source = build_source(_config(data_dir, image_key="photo"))
    with pytest.raises(KeyError, match=r"no feature 'photo' \(for 'rgb'\); it has \['image'"):
        source[0]
    with pytest.raises(ValueError, match=r"no validation data: set data\.eval_split"):
        build_source(_config(data_dir), "validation")


def test_mock_data_gray_images_become_rgb_and_resize():
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        config = dict(
            source="tfds", tfds_name="mnist", split="train", image_key="image",
            resolution=R, batch_size=5, validation_fraction=0.0, eval_split="test",
        )  # fmt: skip
        raw = tfds.data_source("mnist", split="test")
        ev = eval_dataset(config, "validation")
        for i in range(3):
            gray = np.asarray(raw[i]["image"]) / np.float32(255.0)  # [28, 28, 1]
            want = center_crop_resize(np.repeat(gray, 3, -1), R)
            np.testing.assert_allclose(ev[i]["rgb"], want, atol=1e-6)
        batch = next(pipeline_from_config(config, 0, 1))
    assert batch["rgb"].shape == (5, R, R, 3) and 0 <= batch["rgb"].min() <= batch["rgb"].max() <= 1


def test_pretokenize_cli_reads_a_tfds_dataset(data_dir, tmp_path, untrained_tokenizers):
    from mmjax.data.pretokenized import PretokenizedSource
    from mmjax.pretokenize.run import main
    from mmjax.tokenizers import Tokenizer

    model = {"type": "conv", "size": "tiny", "channels": 8, "channel_mult": [1, 1, 2, 2]}
    dirs = untrained_tokenizers(("rgb",), model, {"type": "fsq", "levels": [4, 4, 4]}, R)
    out = str(tmp_path / "tok")
    manifest = main(
        [
            "--source", "tfds", "--tfds-name", "mmjax_tiny_photos", "--data-dir", data_dir,
            "--split", "test", "--image-key", "image", "--tokenizers", f"rgb={dirs['rgb']}",
            "--out", out, "--resolution", str(R), "--batch-size", "3",
        ]
    )  # fmt: skip
    assert manifest["tfds_name"] == "mmjax_tiny_photos" and manifest["split"] == "test"
    source = build_source(_config(data_dir, split="test", keys={"index": "index"}), "all")
    crops = np.stack(
        [
            center_crop_resize(_image(int(source[i]["index"])) / np.float32(255.0), R)
            for i in range(4)
        ]
    )
    tokens = np.stack([PretokenizedSource(out)[i]["tok_rgb"] for i in range(4)])
    np.testing.assert_array_equal(tokens, np.asarray(Tokenizer.load(dirs["rgb"]).encode(crops)))


@pytest.mark.slow  # a minute of training or compiling: CI's slow step
def test_tokenizer_trains_on_a_tfds_dataset_and_evaluates_on_its_test_split(data_dir, tmp_path):
    """A tokenizer run reads the builder's train split and scores the centre crops of its
    test split (data.eval_split), and its bundle records the dataset."""
    from mmjax.configs import load
    from mmjax.tokenizers import Tokenizer
    from mmjax.train.tokenizer_trainer import TokenizerTrainer, reconstruction_metrics

    c = load("tokenizer_rgb", "quantizer=fsq,quick")
    c.data.update(_config(data_dir, eval_split="test", batch_size=8))
    c.total_steps = c.eval.every = c.checkpoint.every = 2
    c.log_every, c.checkpoint.async_save, c.eval.usage_images = 1, False, 4
    trainer = TokenizerTrainer(c, str(tmp_path))
    final = trainer.run()
    test = tfds.data_source("mmjax_tiny_photos", split="test", data_dir=data_dir)
    order = [int(test[i]["index"]) for i in range(len(test))]  # TFDS's shuffled order
    assert sorted(order) == list(range(100, 104))
    crops = np.stack([center_crop_resize(_image(k) / np.float32(255.0), R) for k in order])
    np.testing.assert_allclose(trainer.val_raw, crops, atol=1e-6)
    tok = Tokenizer.load(str(tmp_path))
    recon = np.asarray(tok.decode(tok.encode(crops)))
    for key, value in reconstruction_metrics("rgb", crops, recon).items():
        np.testing.assert_allclose(final[f"eval/{key}"], value, rtol=1e-4, atol=1e-4)
    assert tok.data["source"] == "tfds" and tok.data["tfds_name"] == "mmjax_tiny_photos"
