"""`augment.flip: alternating`: every image mirrored in every other epoch, the same way in every run."""

from __future__ import annotations

import numpy as np

from imgclf import config
from imgclf.data import augment, tfdata

IMAGES = 64


def write_split(directory) -> None:
    """Images whose left column is 1 and right column 0, so a mirrored image says so."""
    pixels = np.zeros((2, 2, 1), np.uint8)
    pixels[:, 0] = 1
    examples = ((pixels, index % 2, index) for index in range(IMAGES))
    tfdata.write_shards(directory, "train", examples, count=IMAGES, examples_per_shard=100)


def mirrored_by_index(directory, *, epochs: int, first_epoch: int = 0, seed: int = 7) -> list[dict[int, bool]]:
    """For each epoch, manifest index -> whether that image arrived mirrored."""
    dataset = tfdata.make_dataset(directory, "train", image_shape=(2, 2, 1), num_classes=2, batch_size=16,
                                  training=True, seed=seed, example_count=IMAGES, epochs=epochs,
                                  first_epoch=first_epoch, with_index=True, alternate_flips=True)
    batches = [(images.numpy(), indices.numpy()) for images, _, indices in dataset]
    per_epoch = IMAGES // 16
    return [{int(index): bool(image[0, 0, 0] == 0) for images, indices in batches[start:start + per_epoch]
             for image, index in zip(images, indices, strict=True)}
            for start in range(0, len(batches), per_epoch)]


def test_each_image_flips_every_other_epoch_from_a_random_start(tmp_path):
    write_split(tmp_path)
    epochs = mirrored_by_index(tmp_path, epochs=3)
    assert all(len(epoch) == IMAGES for epoch in epochs)
    assert 16 <= sum(epochs[0].values()) <= 48  # about half at random in the first epoch
    assert all(epochs[1][index] != epochs[0][index] for index in range(IMAGES))  # then the opposite
    assert epochs[2] == epochs[0]


def test_a_resumed_run_and_a_rerun_see_the_same_flips(tmp_path):
    write_split(tmp_path)
    whole = mirrored_by_index(tmp_path, epochs=3)
    assert mirrored_by_index(tmp_path, epochs=3, first_epoch=2) == whole[2:]
    assert mirrored_by_index(tmp_path, epochs=3) == whole
    assert mirrored_by_index(tmp_path, epochs=1, seed=8) != whole[:1]  # the seed decides the first coin


def test_alternating_adds_no_random_flip_layer():
    policy = config.AugmentConfig(enabled=True, flip="alternating", translate=0.1)
    layers = augment.build_augmentation(policy, seed=0).layers
    assert [type(layer).__name__ for layer in layers] == ["RandomTranslation"]
