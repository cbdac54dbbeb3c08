"""Preprocess: seeded stratified splits, class minimums, skipped files reported, outputs complete."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from imgclf.config import params_from_dict
from imgclf.data import preprocess, sources


def test_stratified_split_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(4), [100, 50, 20, 10])
    kept, held = preprocess.stratified_split(labels, 0.2, seed=7)
    again_kept, again_held = preprocess.stratified_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(held, again_held)
    np.testing.assert_array_equal(kept, again_kept)
    assert np.bincount(labels[held]).tolist() == [20, 10, 4, 2]
    assert not set(kept) & set(held) and len(kept) + len(held) == len(labels)
    _, other = preprocess.stratified_split(labels, 0.2, seed=8)
    assert not np.array_equal(held, other)


def test_tiny_classes_keep_one_image_on_each_side():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    kept, held = preprocess.stratified_split(labels, 0.1, seed=0)
    assert set(labels[kept]) == {0, 1} and set(labels[held]) == {0, 1}


def test_cap_per_class_samples_training_only():
    labels = np.repeat(np.arange(3), 50)
    positions = np.arange(150)
    capped = preprocess.cap_per_class(positions, labels, 10, seed=0)
    assert np.bincount(labels[capped]).tolist() == [10, 10, 10]
    assert preprocess.cap_per_class(positions, labels, None, seed=0) is positions


def test_make_splits_keeps_the_official_test_split_apart(params_dict):
    params_dict["data"].update(val_fraction=0.25, max_per_class=5)
    params = params_from_dict(params_dict)
    labels = np.repeat(np.arange(2), 40)
    official_test = np.zeros(80, dtype=bool)
    official_test[30:40] = official_test[70:80] = True
    split = preprocess.make_splits(labels, official_test, params=params)
    np.testing.assert_array_equal(split.test, np.flatnonzero(official_test))
    assert np.bincount(labels[split.train]).tolist() == [5, 5]
    assert np.bincount(labels[split.val]).tolist() == [8, 8]  # max_per_class leaves validation alone
    assert not (set(split.train) | set(split.val)) & set(split.test)


def _prepare(tmp_path, params_dict, folder):
    params = params_from_dict(params_dict)
    raw = tmp_path / "raw"
    sources.fetch_source(source="image_folder", path=str(folder), sha256=None, raw_dir=raw,
                         download_dir=tmp_path / "downloads", seed=params.seed)
    return preprocess.run(params, raw_dir=raw, out_dir=tmp_path / "prepared", workers=1)


def test_corrupt_files_odd_sizes_and_modes_are_handled(write_image_folder, tmp_path, tiny_params_dict):
    folder = write_image_folder(tmp_path / "photos", {"cats": 12, "dogs": 12}, size=24)
    from PIL import Image

    Image.new("RGBA", (50, 17), (0, 0, 255, 128)).save(folder / "cats" / "wide_rgba.png")
    Image.new("L", (9, 40), 128).save(folder / "dogs" / "tall_grey.png")
    (folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "dogs" / "empty.png").write_bytes(b"")
    meta = _prepare(tmp_path, tiny_params_dict, folder)

    prepared = tmp_path / "prepared"
    assert meta["skipped"] == 2
    with open(prepared / "skipped.csv") as handle:
        skipped = {row["original"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader(handle)}
    assert set(skipped) == {"broken.jpg", "empty.png"} and all(skipped.values())
    assert meta["class_names"] == ["cats", "dogs"]
    assert sum(meta["counts"].values()) == 26  # 24 generated + 2 odd-sized; the 2 unreadable are skipped
    with open(prepared / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 26 and {row["split"] for row in rows} == {"train", "val", "test"}
    assert [int(row["id"]) for row in rows] == list(range(26))
    assert (prepared / "meta.json").stat().st_size > 0
    assert not list(prepared.glob("*.png")), "figures belong to the preview stage, not to the prepared data"
    assert json.loads((prepared / "meta.json").read_text())["image_size"] == 32
    assert not list(tmp_path.glob(".prepared-*")), "no staging directory left behind"


def test_small_class_stops_the_stage_with_what_to_do(write_image_folder, tmp_path, tiny_params_dict):
    folder = write_image_folder(tmp_path / "photos", {"big": 20, "tiny": 3})
    with pytest.raises(preprocess.PreprocessError, match=r"'tiny' \(3\).*small_class_policy: drop"):
        _prepare(tmp_path, tiny_params_dict, folder)
    assert not (tmp_path / "prepared").exists()


def test_small_class_can_be_dropped(write_image_folder, tmp_path, tiny_params_dict):
    folder = write_image_folder(tmp_path / "photos", {"big": 20, "other": 20, "tiny": 3})
    tiny_params_dict["preprocess"]["small_class_policy"] = "drop"
    meta = _prepare(tmp_path, tiny_params_dict, folder)
    assert meta["class_names"] == ["big", "other"] and sum(meta["counts"].values()) == 40


def test_split_is_reproducible_across_runs(write_image_folder, tmp_path, tiny_params_dict):
    folder = write_image_folder(tmp_path / "photos", {"a": 15, "b": 15})
    _prepare(tmp_path, tiny_params_dict, folder)
    first = (tmp_path / "prepared" / "manifest.csv").read_text()
    _prepare(tmp_path, tiny_params_dict, folder)
    assert (tmp_path / "prepared" / "manifest.csv").read_text() == first
