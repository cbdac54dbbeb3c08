"""The training stream mixes classes from the first batch, although the shards hold each split sorted by class."""

from __future__ import annotations

import numpy as np

from imgclf.data import tfdata


def test_class_sorted_shards_give_mixed_batches(tmp_path, monkeypatch):
    # A buffer far smaller than the split, as 20,000 is for CIFAR-10's 45,000 training images.
    monkeypatch.setattr(tfdata, "SHUFFLE_BUFFER", 50)
    classes, per_class = 10, 100
    labels = np.repeat(np.arange(classes), per_class)  # the order preprocess writes a split in
    examples = ((np.full((2, 2, 1), label, np.uint8), int(label), index) for index, label in enumerate(labels))
    tfdata.write_shards(tmp_path, "train", examples, count=len(labels), examples_per_shard=400)
    dataset = tfdata.make_dataset(tmp_path, "train", image_shape=(2, 2, 1), num_classes=classes, batch_size=100,
                                  training=True, seed=0, example_count=len(labels))
    first, last = [np.argmax(targets, axis=1) for _, targets in dataset.take(10)][::9]
    # Shuffled over the whole split: each batch of 100 draws from (nearly) every class, at both ends of the epoch.
    assert len(set(first.tolist())) >= 8 and len(set(last.tolist())) >= 8


def test_seed_zero_trains(tmp_path):
    """`seed: 0` is a valid choice: the per-epoch shuffle must not trip over TensorFlow's (0, 0) seed check."""
    labels = np.repeat(np.arange(2), 8)
    examples = ((np.full((2, 2, 1), label, np.uint8), int(label), index) for index, label in enumerate(labels))
    tfdata.write_shards(tmp_path, "train", examples, count=len(labels), examples_per_shard=100)
    tfdata.configure(seed=0, deterministic=False)
    dataset = tfdata.make_dataset(tmp_path, "train", image_shape=(2, 2, 1), num_classes=2, batch_size=4,
                                  training=True, seed=0, example_count=len(labels))
    assert sum(len(targets) for _, targets in dataset.take(4)) == 16
