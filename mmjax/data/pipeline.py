"""The Grain input pipeline: seeded shuffle, repeat, per-host shard, aligned augmentation
or resize-and-crop, batching, worker processes, prefetch. Iterators are checkpointable
(get_state/set_state). `eval_dataset(config)` is the validation data at the evaluation
policy (centre crop), indexable example by example."""

import grain
import jax

from mmjax.data.augment import RandomCropFlip
from mmjax.data.resize import ResizeCrop, resolve_policy
from mmjax.data.sources import build_source


def build_dataset(
    source,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    host_index: int = 0,
    host_count: int = 1,
    transform=None,
    drop_remainder: bool = True,
) -> grain.MapDataset:
    """A batched MapDataset of this host's examples.

    batch_size is per host. Shuffling is a seeded permutation, different in each epoch;
    `num_epochs=None` repeats forever. Host h of H takes positions h, h + H, ... of the
    global shuffled stream, so hosts see disjoint examples whose union is the data.
    `transform(example, rng)` runs per example with a generator seeded by the example's
    global position, so the transformed stream is the same for any host count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= host_index < host_count:
        raise ValueError(f"host_index must lie in [0, {host_count}), got {host_index}")
    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if transform is not None:
        # Before the host shard (the dataset is lazy, so each host still transforms only its
        # own examples): an example's random stream then depends on its global position, not
        # on how many hosts share the data, and a run is the same on any number of hosts.
        ds = ds.random_map(transform)
    ds = ds[host_index::host_count]
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def make_iterator(dataset: grain.MapDataset, *, worker_count: int = 0, prefetch: int = 2):
    """A checkpointable iterator: `it.get_state()` / `it.set_state(state)` resume exactly.

    worker_count > 0 runs the per-example work in that many processes.
    """
    it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
    if worker_count > 0:
        from absl import flags

        # Grain's workers read absl flags; outside `absl.app.run` nobody parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)


def train_transform(config):
    """The per-example training transform of a data config (None: none): resize policy
    random_resized_crop -> ResizeCrop(train=True); center_crop -> the centre crop, flipped
    with flip_prob; none -> RandomCropFlip(crop_size, flip_prob) on examples as stored."""
    policy = resolve_policy(config)
    flip = config.get("flip_prob", 0.0)
    if policy == "none":
        crop = config.get("crop_size", 0) or None  # 0 or None: no crop
        return RandomCropFlip(crop, flip) if crop or flip else None
    scale = tuple(config.get("crop_scale", (0.8, 1.0)))
    ratio = tuple(config.get("crop_ratio", (0.9, 1.1)))
    center = policy == "center_crop"
    return ResizeCrop(config["resolution"], True, scale, ratio, flip, center=center)


def eval_transform(config):
    """The evaluation transform of a data config: the centre crop at data.resolution, or
    None where the policy keeps examples as stored."""
    if resolve_policy(config) == "none":
        return None
    return ResizeCrop(config["resolution"], train=False)


def eval_dataset(config, part: str = "validation") -> grain.MapDataset:
    """The examples of `part` ("validation": the held-out data, see
    `mmjax.data.sources.build_source`) at the evaluation policy: `ds[i]` is example i,
    unshuffled."""
    ds = grain.MapDataset.source(build_source(config, part))
    transform = eval_transform(config)
    return ds if transform is None else ds.map(transform)


def pipeline_from_config(config, host_index: int | None = None, host_count: int | None = None):
    """The iterator a trainer reads, from the `data` config section.

    Fields: source (+ its own fields, see `build_source`), batch_size (global), seed,
    shuffle, num_epochs, resolution, resize (mmjax.data.resize), crop_scale, crop_ratio,
    crop_size (resize "none": 0 = no crop), flip_prob, worker_count, prefetch.
    """
    host_batch_size(config, jax.process_count() if host_count is None else host_count)
    return host_iterator(
        build_source(config), config, train_transform(config), host_index, host_count
    )


def host_batch_size(config, host_count: int) -> int:
    """Each host's share of the global data.batch_size, which must divide evenly."""
    batch_size = config["batch_size"]
    if batch_size % host_count:
        raise ValueError(f"data.batch_size ({batch_size}) must divide over {host_count} hosts")
    return batch_size // host_count


def host_iterator(
    source, config, transform, host_index: int | None = None, host_count: int | None = None
):
    """This host's batches of `source` (its share of the global data.batch_size, shuffled by
    data.seed, `transform` per example) as a Grain iterator; trainers of every kind read this."""
    host_index = jax.process_index() if host_index is None else host_index
    host_count = jax.process_count() if host_count is None else host_count
    ds = build_dataset(
        source,
        batch_size=host_batch_size(config, host_count),
        seed=config.get("seed", 0),
        shuffle=config.get("shuffle", True),
        num_epochs=config.get("num_epochs", None),
        host_index=host_index,
        host_count=host_count,
        transform=transform,
    )
    return make_iterator(
        ds, worker_count=config.get("worker_count", 0), prefetch=config.get("prefetch", 2)
    )
