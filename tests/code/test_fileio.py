"""The staged-directory helper every directory-writing stage uses: all of the new directory or all of the old."""

from __future__ import annotations

import os

import pytest

from imgclf import artifacts, fileio


def test_staged_directory_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "out"
    (target / "stale").mkdir(parents=True)
    (target / "stale" / "old.txt").write_text("old")
    with fileio.staged_directory(target) as staging:
        assert staging.parent == target.parent and staging != target
        (staging / "new.txt").write_text("new")
        assert (target / "stale" / "old.txt").is_file(), "the old directory stays until the new one is complete"
    assert sorted(path.name for path in target.iterdir()) == ["new.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"], "no staging or old copy left behind"
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)


def test_a_failure_while_writing_leaves_the_old_directory_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), fileio.staged_directory(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    assert [path.name for path in target.iterdir()] == ["old.txt"]


def test_a_failed_swap_restores_the_old_directory(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = fileio.staging_dir(target)
    real_replace = os.replace

    def replace(source, destination):
        if str(source) == str(staging):
            raise OSError("disk gone")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        fileio.replace_directory(staging, target)
    assert (target / "old.txt").read_text() == "old"


def test_atomic_path_renames_a_finished_file_and_drops_a_failed_one(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError), fileio.atomic_path(target, suffix=".keras") as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".keras"
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert [path.name for path in tmp_path.iterdir()] == ["model.keras"] and target.read_text() == "old"
    with fileio.atomic_path(target, suffix=".keras") as temporary:
        temporary.write_text("new")
    assert [path.name for path in tmp_path.iterdir()] == ["model.keras"] and target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(fileio.umask_mode()), "mkstemp's 0600 is not kept"


def test_atomic_symlink_swaps_the_link_and_never_touches_its_old_target(tmp_path):
    (tmp_path / "old").write_text("old data")
    (tmp_path / "new").write_text("new data")
    link = tmp_path / "input"
    fileio.atomic_symlink("old", link)
    fileio.atomic_symlink("new", link)
    assert os.readlink(link) == "new" and (tmp_path / "old").read_text() == "old data"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input", "new", "old"]


def test_prepared_meta_says_which_stage_to_rerun(tmp_path):
    (tmp_path / artifacts.META_FILE).write_text('{"class_names": ["a", "b"], "image_size": 8}')
    with pytest.raises(artifacts.MetadataError, match=r"lacks .*channels.*dvc repro preprocess"):
        artifacts.read_prepared_meta(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the preprocess stage"):
        artifacts.read_prepared_meta(tmp_path / "missing")


def test_a_kept_copy_gets_the_current_code_and_keeps_its_params_and_data(tmp_path):
    from imgclf import smoke_copy

    source, copy = tmp_path / "checkout", tmp_path / "copy"
    for root, version in ((source, "new"), (copy, "old")):
        for entry in smoke_copy.CODE_ENTRIES:
            if "." in entry or entry == "MLproject":
                (root / entry).parent.mkdir(parents=True, exist_ok=True)
                (root / entry).write_text(version)
            else:
                (root / entry / "sub").mkdir(parents=True)
                (root / entry / "sub" / "module.py").write_text(version)
    (copy / "imgclf" / "removed_since.py").write_text("old")
    (copy / "params.yaml").write_text("overrides")
    (copy / "data").mkdir()
    (copy / "data" / "prepared").write_text("kept")

    smoke_copy.refresh_code(copy, source_root=source)

    assert (copy / "imgclf" / "sub" / "module.py").read_text() == "new"
    assert not (copy / "imgclf" / "removed_since.py").exists()
    assert (copy / "dvc.yaml").read_text() == "new" and (copy / "stages" / "sub" / "module.py").read_text() == "new"
    assert (copy / "params.yaml").read_text() == "overrides" and (copy / "data" / "prepared").read_text() == "kept"
    assert sorted(path.name for path in copy.iterdir() if path.name.startswith(".")) == []
