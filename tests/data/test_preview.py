"""The preview stage: figures of the prepared data, drawn beside it so that augment.* never reruns preprocess."""

from __future__ import annotations

import numpy as np
import yaml

from imgclf import artifacts
from imgclf.config import params_from_dict
from imgclf.data import preview
from imgclf.entry_points import PROJECT_ROOT


def test_preview_draws_both_figures_from_a_sample_of_every_class(write_prepared, tmp_path, tiny_params_dict):
    class_names = ["a", "b", "c"]
    meta = write_prepared(tmp_path / "prepared", class_names=class_names, per_class={"train": 10, "val": 2, "test": 2})
    tiny_params_dict["augment"].update(enabled=True, preview_images=12)
    preview.run(params_from_dict(tiny_params_dict), prepared_dir=tmp_path / "prepared", out_dir=tmp_path / "preview")

    for name in (artifacts.CLASS_DISTRIBUTION_PLOT, artifacts.AUGMENTATION_PREVIEW_PLOT):
        assert (tmp_path / "preview" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    pixels, labels = preview.sample_training_images(tmp_path / "prepared", image_shape=(8, 8, 3), train_count=30,
                                                    count=12, seed=42)
    assert pixels.shape == (12, 8, 8, 3) and pixels.dtype == np.uint8
    assert set(labels) == {0, 1, 2}, "drawn from the whole split, not its first (sorted by class) images"
    again, _ = preview.sample_training_images(tmp_path / "prepared", image_shape=(8, 8, 3), train_count=30,
                                              count=12, seed=42)
    np.testing.assert_array_equal(pixels, again)
    assert meta["counts"]["train"] == 30


def test_the_prepared_data_does_not_depend_on_augment():
    # Switching augmentation on must not decode every image again and rerun the trainings' common input.
    stages = yaml.safe_load((PROJECT_ROOT / artifacts.DVC_FILE).read_text(encoding="utf-8"))["stages"]
    assert not [key for key in stages["preprocess"]["params"] if str(key).split(".")[0] == "augment"]
    assert "imgclf/data/augment.py" not in stages["preprocess"]["deps"]
    assert "augment" in stages["preview"]["params"] and "data/prepared" in stages["preview"]["deps"]
