"""The input pipeline: TFRecord shards on disk -> batched tf.data datasets.

This is the only module that imports TensorFlow. Images are stored as raw uint8 HWC bytes (no JPEG
re-encoding), so reading a record costs a memcpy, not a decode; the decoded split is cached in memory when
it fits a budget, batched, augmented batch-wise on parallel threads and prefetched, so the model never
waits on input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from imgclf.data.records import split_files

# Splits whose decoded pixels fit under this many bytes are cached in memory after the first epoch.
IN_MEMORY_CACHE_BUDGET_BYTES = 3 * 1024**3
SHUFFLE_BUFFER = 20_000

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "index": tf.io.FixedLenFeature([], tf.int64),
}


def shard_name(split: str, shard: int, shard_count: int) -> str:
    return f"{split}-{shard:05d}-of-{shard_count:05d}.tfrecord"


def write_shards(directory: Path, split: str, examples: Iterable[tuple[np.ndarray, int, int]], *,
                 count: int, examples_per_shard: int) -> list[str]:
    """Write `(pixels, label, index)` examples of one split into TFRecord shards; return the file names.

    `count` is the number of examples, known up front so shard names carry the total ("-of-N").
    """
    shard_count = max(1, -(-count // examples_per_shard))
    names = [shard_name(split, shard, shard_count) for shard in range(shard_count)]
    iterator: Iterator[tuple[np.ndarray, int, int]] = iter(examples)
    written = 0
    for shard, name in enumerate(names):
        in_this_shard = min(examples_per_shard, count - shard * examples_per_shard)
        with tf.io.TFRecordWriter(str(directory / name)) as writer:
            for _ in range(max(in_this_shard, 0)):
                pixels, label, index = next(iterator)
                writer.write(_serialize(pixels, label, index))
                written += 1
    if written != count:
        raise RuntimeError(f"{split}: expected {count} examples, wrote {written}")
    return names


def _serialize(pixels: np.ndarray, label: int, index: int) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(pixels).tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(index)])),
    }
    # deterministic: the feature map's keys in sorted order. Without it protobuf writes them in a per-process hash
    # order, so rerunning preprocess on the same images gave other bytes: a second copy of every shard in DVC's
    # cache, and every later stage ran again on data that had not changed.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def make_dataset(prepared_dir: Path, split: str, *, image_shape: tuple[int, int, int], num_classes: int,
                 batch_size: int, training: bool = False, seed: int = 0,
                 augment: Callable | None = None, with_index: bool = False,
                 example_count: int | None = None, epochs: int = 1, first_epoch: int = 0,
                 exclude: frozenset[int] = frozenset(), shard: tuple[int, int] | None = None,
                 alternate_flips: bool = False) -> tf.data.Dataset:
    """Batches of `(float32 pixels in [0, 255], one-hot labels)` (plus the manifest index if asked).

    Evaluation datasets keep the on-disk order, which is the manifest order. Training datasets cover
    epochs `first_epoch..epochs-1` back to back, each shuffled with its own seed (so a resumed run sees
    the same order as an uninterrupted one) and augmented; fit them with `steps_per_epoch`. `exclude`: manifest
    ids left out (imgclf/data/exclusions.py); `example_count` counts what remains.

    `shard=(count, index)` (training datasets of a multi_worker process, imgclf/training/distributed.py): only the
    index-th of `count` equal parts of the split (`example_count // count` images each), in whole batches, so
    every process runs the same steps.

    `alternate_flips` (training datasets; `augment.flip: alternating`): each image is mirrored in every other
    epoch, at random in epoch 0 (a seeded function of its manifest index) and the opposite of its previous epoch's
    after that (airbench's alternating flips): over any two epochs the model sees every image both ways, where
    independent random flips show a quarter of them one way only.
    """
    files = split_files(prepared_dir, split)
    height, width, channels = image_shape
    options = tf.data.Options()
    options.deterministic = True

    def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        example = tf.io.parse_single_example(record, _FEATURES)
        pixels = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), (height, width, channels))
        return pixels, example["label"], example["index"]

    # Sequential reads keep the manifest order; parallel parsing preserves it (deterministic=True).
    examples = tf.data.TFRecordDataset(files, num_parallel_reads=None).with_options(options)
    examples = examples.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if exclude:
        excluded = tf.constant(sorted(exclude), dtype=tf.int64)
        examples = examples.filter(lambda pixels, label, index: tf.reduce_all(tf.not_equal(index, excluded)))
    if shard is not None:
        shards, index = shard
        if example_count is None:
            raise ValueError("a sharded dataset needs its example_count")
        example_count //= shards
        examples = examples.take(example_count * shards).shard(shards, index)
    cached = example_count is not None and example_count * height * width * channels <= IN_MEMORY_CACHE_BUDGET_BYTES
    if cached:
        examples = examples.cache()
    # The shards hold each split sorted by class. A buffer smaller than the split fills with the first classes
    # only: on CIFAR-10 (45,000 images, buffer 20,000) the first tenth of every epoch's batches held no image of
    # classes 6-9 and the last tenth was 20% trucks. When the split fits in memory, shuffle all of it.
    shuffle_buffer = example_count if cached else SHUFFLE_BUFFER

    def to_model_inputs(pixels: tf.Tensor, label: tf.Tensor, index: tf.Tensor):
        images = tf.cast(pixels, tf.float32)
        if augment is not None and training:
            images = augment(images, training=True)
        targets = tf.one_hot(label, num_classes)
        return (images, targets, index) if with_index else (images, targets)

    if training:
        def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
            shuffled = epoch_shuffle(examples, shuffle_buffer, seed, epoch)
            batches = shuffled.batch(batch_size, drop_remainder=shard is not None)
            if alternate_flips:  # batch-wise: one vectorised map per batch, not one per image
                batches = batches.map(lambda pixels, label, index: (
                    alternating_flips(pixels, index, epoch, seed), label, index), num_parallel_calls=tf.data.AUTOTUNE)
            return batches

        dataset = tf.data.Dataset.range(first_epoch, max(epochs, first_epoch + 1)).flat_map(one_epoch)
    else:
        dataset = examples.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        if example_count is not None:
            # TFRecord files have no known length: Keras then learns it by running out of data in the first
            # `evaluate` and warns "Your input ran out of data" into the training log. With the length known it
            # stops cleanly (and tf.data checks the count).
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-example_count // batch_size)))
    dataset = dataset.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def alternating_flips(pixels: tf.Tensor, index: tf.Tensor, epoch: tf.Tensor, seed: int) -> tf.Tensor:
    """A batch of NHWC images, each mirrored left-right when its first-epoch coin differs from the parity of
    `epoch`. The coin hashes `seed` and the image's manifest `index` only (FarmHash: the same in every epoch,
    process, resumed run and TensorFlow build)."""
    keys = tf.strings.join([tf.strings.as_string(index), tf.strings.as_string(tf.constant(seed, tf.int64))], "/")
    coin = tf.equal(tf.strings.to_hash_bucket_fast(keys, 2), 1)
    mirrored = tf.not_equal(coin, tf.equal(epoch % 2, 1))
    return tf.where(mirrored[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(pixels, axis=[2]), pixels)


def array_dataset(features: np.ndarray, targets: np.ndarray, *, batch_size: int, seed: int, epochs: int,
                  first_epoch: int = 0, shard: tuple[int, int]) -> tf.data.Dataset:
    """Training batches of in-memory arrays (the cached backbone features and one-hot labels) for a multi_worker
    process, in `make_dataset`'s scheme: the index-th of `count` equal round-robin parts, each epoch shuffled
    with its own seed, whole batches only (every process runs the same steps); fit with `steps_per_epoch`."""
    count, index = shard
    per_process = len(targets) // count
    examples = tf.data.Dataset.from_tensor_slices((features, targets)).take(per_process * count).shard(count, index)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        shuffled = epoch_shuffle(examples, per_process, seed, epoch)
        return shuffled.batch(batch_size, drop_remainder=True)

    dataset = tf.data.Dataset.range(first_epoch, max(epochs, first_epoch + 1)).flat_map(one_epoch)
    return dataset.prefetch(tf.data.AUTOTUNE)


def epoch_shuffle(examples: tf.data.Dataset, buffer_size: int, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
    """`examples` shuffled for one epoch, traced inside a `flat_map` over the epoch numbers.

    `configure` sets TensorFlow's global seed through `tensorflow_seed`, but a caller's own
    `keras.utils.set_random_seed(0)` (the usual notebook line, or a test's) leaves it at 0, and tracing the shuffle
    then failed. This epoch function's graph alone gets its seed through `tensorflow_seed` too, so the order is the
    one `configure(seed=0)` gives."""
    graph = tf.compat.v1.get_default_graph()  # the flat_map function's graph, while it is traced
    if graph.seed is not None:
        graph.seed = tensorflow_seed(graph.seed)
    return examples.shuffle(buffer_size, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)


def epoch_seed(seed: int, epoch) -> tf.Tensor:
    """The shuffle seed of one epoch: a pure function of (seed, epoch)."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def steps_per_epoch(example_count: int, batch_size: int) -> int:
    return max(1, -(-example_count // batch_size))


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """`none`: the default (one device); `mirrored`: every local GPU, else every logical CPU device;
    `multi_worker`: the default here, see below."""
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    # multi_worker: not TensorFlow's MultiWorkerMirroredStrategy (Keras 3's model.fit cannot reduce its per-step
    # logs under it, tensorflow/tensorflow#72388) but Keras' own distribution on JAX, set up by
    # imgclf/training/distributed.py before this: TensorFlow's default strategy here.
    return tf.distribute.get_strategy()


def iterate_numpy(dataset: tf.data.Dataset) -> Iterator:
    """Yield the dataset's elements as numpy arrays (for code that must not touch TensorFlow)."""
    yield from dataset.as_numpy_iterator()


SEED_ZERO_STANDIN = 2_147_483_629  # a large prime nobody types as `seed`
_TF_SEED_MODULUS = 2**31 - 1  # TensorFlow reduces seeds modulo this before its (0, 0) check


def tensorflow_seed(seed: int) -> int:
    """`seed` as TensorFlow's global or graph seed: a fixed non-zero stand-in where TensorFlow would read 0.
    tf.data compares (graph seed, op seed), each reduced modulo 2**31 - 1, with (0, 0) in Python: with a graph seed
    of 0 and a tensor op seed (each epoch's shuffle seed) that comparison fails while tracing ("Using a symbolic
    tf.Tensor as a Python bool")."""
    return SEED_ZERO_STANDIN if seed % _TF_SEED_MODULUS == 0 else seed


def configure(*, seed: int, deterministic: bool) -> None:
    """Seed every RNG and, if asked, make TensorFlow ops deterministic (slower, bit-reproducible)."""
    import keras

    keras.utils.set_random_seed(seed)
    tf.random.set_seed(tensorflow_seed(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
