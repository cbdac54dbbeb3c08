"""Train/test twins: planted copies (exact, resized, JPEG 50, shifted 2 px, cropped) are found across the split,
distinct images never pair, and the exclusions file the trainers read is the same bytes for the same set."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from imgclf.config import params_from_dict
from imgclf.data import duplicates, exclusions, find_duplicates

pytestmark = pytest.mark.duration(seconds=15)  # about, under make test (the stage test imports TensorFlow)

SIZE = 32


def smooth_patterns(count: int, *, seed: int) -> np.ndarray:
    """Photos' stand-ins with structure at every scale a copy keeps: random 4x4 and 8x8 colour fields, upsampled
    smoothly and summed (pure noise would not survive a JPEG re-encode or a shift, and is nothing like a photo)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((SIZE, SIZE),
                                                                                          Image.Resampling.BICUBIC)
        fine = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((SIZE, SIZE),
                                                                                        Image.Resampling.BICUBIC)
        images.append((0.7 * np.asarray(coarse, float) + 0.3 * np.asarray(fine, float)).astype(np.uint8))
    return np.stack(images)


def resized(image: np.ndarray) -> np.ndarray:
    """A copy saved at another size, brought back to the prepared size by preprocessing."""
    smaller = Image.fromarray(image).resize((24, 24), Image.Resampling.BILINEAR)
    return np.asarray(smaller.resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def jpeg50(image: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=50)
    return np.asarray(Image.open(buffer).convert("RGB"))


def shifted(image: np.ndarray) -> np.ndarray:
    return np.pad(image, ((2, 0), (2, 0), (0, 0)), mode="edge")[:SIZE, :SIZE]


def cropped(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image[2:-2, 2:-2]).resize((SIZE, SIZE), Image.Resampling.BICUBIC))


EDITS = {"exact": lambda image: image.copy(), "resized": resized, "jpeg50": jpeg50, "shifted": shifted,
         "cropped": cropped}


def thumbnail_features(images: np.ndarray) -> np.ndarray:
    """A tiny stand-in for backbone features in the pure functions' tests: each image's 4x4 colour thumbnail (the
    search does not care where the vectors come from)."""
    return duplicates.thumbnails(images, side=4)


def views(images: np.ndarray) -> list[np.ndarray]:
    """What the stage compares: features (here the stand-in) and 8x8 thumbnails."""
    return [thumbnail_features(images), duplicates.thumbnails(images)]


THRESHOLD = 0.7  # with the stand-in features: planted copies score 0.85-1.0, distinct images at most 0.41
# (the backbone features' threshold, duplicates.similarity_threshold, is measured in bench/duplicates.py)


def planted_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """(test images, training images, {test row: training row}): each edit of EDITS applied to one test image and
    put into training, among distinct images on both sides."""
    originals = smooth_patterns(40, seed=seed)
    test, train_distinct = originals[:15], originals[15:]
    copies = np.stack([edit(test[row]) for row, edit in enumerate(EDITS.values())])
    train = np.concatenate([train_distinct, copies])
    return test, train, {row: len(train_distinct) + row for row in range(len(EDITS))}


def test_planted_copies_are_found_across_the_split_and_distinct_images_never_pair():
    test, train, planted = planted_split()
    twins = duplicates.cross_twins(views(test), views(train),
                                   test_digests=duplicates.pixel_digests(test),
                                   train_digests=duplicates.pixel_digests(train), threshold=THRESHOLD)
    assert dict(zip(twins.test.tolist(), twins.train.tolist(), strict=True)) == planted
    assert twins.exact.tolist() == [name == "exact" for name in EDITS]
    assert twins.similarity[0] == 1.0 and (twins.similarity >= THRESHOLD).all()


def test_a_folder_without_copies_has_no_pairs_and_no_copies_within_a_split():
    images = smooth_patterns(60, seed=1)
    digests = duplicates.pixel_digests(images)
    twins = duplicates.cross_twins(views(images[:20]), views(images[20:]), test_digests=digests[:20],
                                   train_digests=digests[20:], threshold=THRESHOLD)
    assert len(twins.test) == 0
    assert len(duplicates.images_with_twin_within(views(images), digests=digests, threshold=THRESHOLD)) == 0


def test_copies_within_a_split_count_both_images_of_a_pair():
    images = smooth_patterns(30, seed=2)
    images[7] = jpeg50(images[3])
    images[20] = images[11]
    found = duplicates.images_with_twin_within(views(images), digests=duplicates.pixel_digests(images),
                                               threshold=THRESHOLD)
    assert found.tolist() == [3, 7, 11, 20]


def test_blocked_search_equals_the_whole_matrix_and_never_matches_a_row_with_itself():
    rng = np.random.default_rng(0)
    queries, references = (duplicates.unit_rows(rng.normal(size=(n, 16))) for n in (23, 41))
    whole = queries @ references.T
    matches = duplicates.search(queries, references, threshold=0.5, block_rows=5)
    assert (matches.best == whole.argmax(axis=1)).all()
    assert np.allclose(matches.best_similarity, whole.max(axis=1))
    assert sorted(map(tuple, matches.pairs.tolist())) == sorted(zip(*np.nonzero(whole >= 0.5), strict=True))
    itself = duplicates.search(queries, queries, threshold=0.99, same_set=True, block_rows=4)
    assert (itself.best != np.arange(len(queries))).all() and len(itself.pairs) == 0


def test_a_threshold_that_pairs_everything_keeps_at_most_the_most_similar_twins_per_image():
    rows = duplicates.unit_rows(np.random.default_rng(0).normal(size=(30, 4)) + 5)
    matches = duplicates.search(rows, rows, threshold=0.0, twins=3, block_rows=7)
    assert matches.capped == 30 and len(matches.pairs) == 90
    whole = rows @ rows.T
    for query in range(30):  # its 3 most similar, best first
        assert matches.pairs[matches.pairs[:, 0] == query, 1].tolist() == np.argsort(-whole[query])[:3].tolist()


def test_the_exclusions_file_is_the_same_bytes_for_the_same_set_and_filters_every_view(tmp_path):
    exclusions.write(tmp_path / "a.json", [5, 2, 2])
    exclusions.write(tmp_path / "b.json", np.array([2, 5]))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    excluded = exclusions.read(tmp_path / "a.json")
    assert excluded == {2, 5} and exclusions.read(None) == frozenset()
    features = np.arange(12, dtype=np.float32)[:, None]  # two views of 6 training images
    kept, labels = exclusions.kept_views(features, np.arange(12) % 6, train_count=6, excluded=excluded)
    assert labels.tolist() == [0, 1, 3, 4, 0, 1, 3, 4] and kept[:, 0].tolist() == [0, 1, 3, 4, 6, 7, 9, 10]


@pytest.mark.parametrize("policy", ["report", "exclude_from_training"])
def test_the_stage_names_files_as_the_manifest_does_and_excludes_only_under_its_policy(
        write_prepared, tmp_path, params_dict, policy):
    test, train, planted = planted_split(seed=3)
    # one class; the training split first, as preprocess numbers it (ids 0..), then validation and test
    meta = write_prepared(tmp_path / "prepared", class_names=["thing"], size=SIZE,
                          per_class={"train": len(train), "val": 2, "test": len(test)},
                          pixels={"train": train, "test": test})
    features = tmp_path / "features"
    features.mkdir()
    for split, images in (("train", train), ("test", test)):
        np.savez(features / f"{split}.npz", features=thumbnail_features(images), labels=np.zeros(len(images)))
    params_dict["duplicates"] = {"similarity_threshold": THRESHOLD, "policy": policy}
    out = tmp_path / "duplicates"
    summary = find_duplicates.run(params_from_dict(params_dict), prepared_dir=tmp_path / "prepared",
                                  features_dir=features, out_dir=out)

    first_test = meta["counts"]["train"] + meta["counts"]["val"]
    with open(out / "pairs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(row["test_id"]), int(row["train_id"])) for row in rows] == [
        (first_test + test_row, train_row) for test_row, train_row in planted.items()]
    assert rows[0]["test_file"] == f"thing/{first_test}.png" and rows[0]["exact"] == "1"
    assert summary["train_test_duplicates"] == len(EDITS) == summary["train_twins"]
    assert summary == json.loads((out / "duplicates.json").read_text())
    excluded = json.loads((out / "exclude.json").read_text())["train_ids"]
    assert excluded == (sorted(planted.values()) if policy == "exclude_from_training" else [])


def cifar_photos(archive, count: int) -> np.ndarray:
    """The first `count` photos of the CIFAR-10 archive, in its stream order (no seeking back in the gzip)."""
    import tarfile

    photos = []
    with tarfile.open(archive, "r|gz") as stream:
        for member in stream:
            if member.isfile() and member.name.endswith(".jpg"):
                photos.append(np.asarray(Image.open(stream.extractfile(member)).convert("RGB")))
                if len(photos) == count:
                    break
    return np.stack(photos)


@pytest.mark.shared
def test_planted_copies_of_photos_through_the_shared_backbone(shared_backbone, shared_cifar):
    # What the pipeline compares (the ImageNet EfficientNet-Lite0 at 96 px, pooled, as extract_features caches it,
    # and thumbnails), on real photos: smooth generated patterns are no photos to it. Every planted copy's nearest
    # training image is its original, and no two distinct photos reach params.yaml's threshold. A 32-px photo
    # re-encoded at JPEG quality 50, or shifted 2 px, can fall below it (BENCHMARKS.md measures how often).
    from imgclf.config import Params, TransferConfig
    from imgclf.training import backbones, features, transfer_model

    config = TransferConfig(backbone=str(shared_backbone), input_size=96)
    backbone, preprocessing = features.load_backbone(backbones.resolve(config), config)
    extractor = transfer_model.build_feature_extractor(backbone, preprocessing, input_shape=(SIZE, SIZE, 3),
                                                       input_size=96)
    photos = cifar_photos(shared_cifar, 60)
    test, train = photos[:15], np.concatenate([photos[15:], [edit(photos[row]) for row, edit in
                                                             enumerate(EDITS.values())]])
    features = np.asarray(extractor.predict_on_batch(np.concatenate([test, train]).astype(np.float32)))
    test_views = [features[:len(test)], duplicates.thumbnails(test)]
    train_views = [features[len(test):], duplicates.thumbnails(train)]
    planted = {row: len(photos) - len(test) + row for row in range(len(EDITS))}
    centres = [view.mean(axis=0) for view in train_views]
    nearest = duplicates.search(duplicates.describe(test_views, centres), duplicates.describe(train_views, centres),
                                threshold=1.01, twins=0).best
    assert {row: int(nearest[row]) for row in planted} == planted
    twins = duplicates.cross_twins(test_views, train_views, test_digests=duplicates.pixel_digests(test),
                                   train_digests=duplicates.pixel_digests(train),
                                   threshold=Params().duplicates.similarity_threshold)
    found = dict(zip(twins.test.tolist(), twins.train.tolist(), strict=True))
    assert found.items() <= planted.items(), "no false pair"
    assert {0, 1, 4} <= found.keys(), "the exact, resized and cropped copies"


def test_a_training_dataset_leaves_out_the_excluded_ids(write_prepared, tmp_path):
    from imgclf.data import tfdata

    write_prepared(tmp_path, class_names=["a", "b"], per_class={"train": 5, "test": 2})
    excluded = frozenset({1, 6, 7})  # training ids are 0..9, the training split numbered first
    dataset = tfdata.make_dataset(tmp_path, "train", image_shape=(8, 8, 3), num_classes=2, batch_size=4,
                                  training=True, with_index=True, example_count=10 - len(excluded),
                                  exclude=excluded)
    seen = sorted(int(index) for _, _, indices in dataset for index in np.asarray(indices))
    assert seen == [0, 2, 3, 4, 5, 8, 9]
