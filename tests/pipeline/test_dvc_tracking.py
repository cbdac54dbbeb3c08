"""DVC sees the data itself and checks every hand edit: real `dvc status` / `dvc repro` in sandbox copies.

`check_params` (first stage) validates all of params.yaml; `fingerprint_data` (always run) digests data.path's local
folder or archive into data/fingerprint.json, which `download` depends on, so a changed image reruns `download` and
an unchanged folder reruns nothing, whatever the data.path string.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from imgclf import smoke_copy
from imgclf.entry_points import PROJECT_ROOT

pytestmark = pytest.mark.integration  # every test runs DVC in a sandbox copy

(ALWAYS_RUN,) = smoke_copy.ALWAYS_RUN  # dvc.yaml: always_changed, it reads the data on every repro


def _up_to_date(root: Path, *targets: str) -> bool:
    return not smoke_copy.stale_stages(root, *targets)


def _ran(result) -> list[str]:
    return smoke_copy.stages_ran(result.stdout)


def _project(base: Path, data_path: Path) -> Path:
    overrides = smoke_copy.merge(smoke_copy.SMOKE_OVERRIDES,
                                 {"data": {"source": "image_folder", "path": str(data_path)}})
    root = smoke_copy.create(base / "project", source_root=PROJECT_ROOT, overrides=overrides)
    assert _ran(smoke_copy.dvc(root, "repro", "download")) == ["check_params", ALWAYS_RUN, "download"]
    assert _up_to_date(root, "download")
    assert _ran(smoke_copy.dvc(root, "repro", "download")) == [ALWAYS_RUN], "an unchanged folder reruns nothing"
    return root


def _assert_download_stale_then_rerun(root: Path) -> None:
    # `_project` showed that an unchanged folder reruns nothing but the fingerprint; a change reruns download.
    assert _ran(smoke_copy.dvc(root, "repro", "download")) == [ALWAYS_RUN, "download"], "the changed data reruns it"


def test_adding_removing_or_changing_one_image_in_a_folder_reruns_download(tmp_path, write_image_folder):
    photos = write_image_folder(tmp_path / "photos", {"cat": 6, "dog": 6})
    root = _project(tmp_path, photos)

    write_image_folder(tmp_path / "extra", {"cat": 1}, seed=7)
    shutil.copy(tmp_path / "extra" / "cat" / "0000.png", photos / "cat" / "new.png")
    _assert_download_stale_then_rerun(root)

    (photos / "dog" / "0003.png").unlink()
    _assert_download_stale_then_rerun(root)

    Image.new("RGB", (24, 24), (1, 2, 3)).save(photos / "cat" / "0001.png")
    _assert_download_stale_then_rerun(root)


def test_replacing_a_local_archive_reruns_download(tmp_path, write_image_folder):
    def archive(seed: int) -> None:
        folder = write_image_folder(tmp_path / f"tree{seed}", {"cat": 5, "dog": 5}, seed=seed)
        with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="photos")

    archive(seed=0)
    root = _project(tmp_path, tmp_path / "photos.tar.gz")
    archive(seed=1)
    _assert_download_stale_then_rerun(root)


def test_a_typo_in_params_stops_repro_before_any_stage_works(tmp_path):
    root = smoke_copy.create(tmp_path / "project", source_root=PROJECT_ROOT, overrides=smoke_copy.SMOKE_OVERRIDES)
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  epochs: 5\n", "  epochs: 5\n  epoch: 3\n", 1))
    result = smoke_copy.dvc(root, "repro", check=False)

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: params.yaml: unknown key 'transfer.epoch'; allowed")
    assert _ran(result) == ["check_params"]
    assert not (root / "data" / "raw").exists() and not (root / "data" / "params_checked").exists()


@pytest.mark.slow(seconds=30)
def test_a_param_change_reruns_only_the_check_and_the_stages_that_read_it(trained_project, tmp_path,
                                                                          copy_trained_project):
    # A key only the last stage reads: every training and evaluation result stays, though check_params (which
    # depends on the whole file) reruns. (Which stages list which keys: tests/code/test_deps.py.)
    root = copy_trained_project(tmp_path / "copy")
    params = root / "params.yaml"
    size = smoke_copy.SMOKE_OVERRIDES["analysis"]["gallery_size"]
    text = params.read_text()
    assert text.count(f"  gallery_size: {size}\n") == 1
    params.write_text(text.replace(f"  gallery_size: {size}\n", f"  gallery_size: {size - 1}\n"))

    assert smoke_copy.stale_stages(root) == {"check_params", "analyze"}
    result = smoke_copy.dvc(root, "repro")
    assert _ran(result) == ["check_params", ALWAYS_RUN, "analyze"]
    assert _up_to_date(root)


def test_an_experiment_on_another_folder_commits_no_link_and_no_images(tmp_path, write_image_folder):
    """`dvc exp run -S data.path=...` reruns download on the new folder, and the experiment's git commit holds nothing
    under data/: no link to the user's data (git would write through it), no copy of the images."""
    first = write_image_folder(tmp_path / "first", {"cat": 6, "dog": 6})
    second = write_image_folder(tmp_path / "second", {"cat": 6, "dog": 7}, seed=3)
    overrides = smoke_copy.merge(smoke_copy.SMOKE_OVERRIDES, {"data": {"source": "image_folder", "path": str(first)}})
    root = smoke_copy.create(tmp_path / "project", source_root=PROJECT_ROOT, overrides=overrides, git=True)
    smoke_copy.dvc(root, "repro", "download")
    smoke_copy.commit(root, "first folder")

    result = smoke_copy.dvc(root, "exp", "run", "--name", "second", "-S", f"data.path={second}", "download")
    assert _ran(result) == ["check_params", ALWAYS_RUN, "download"]
    assert _up_to_date(root, "download")
    assert json.loads((root / "data" / "raw" / "source.json").read_text())["num_examples"]["train"] == 13
    refs = smoke_copy.run_git(root, "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    (ref,) = [name for name in refs if name.endswith("/second")]
    assert smoke_copy.run_git(root, "ls-tree", "-r", ref, "data/").stdout == ""


def _same_file_in_cache(root: Path, path: Path) -> list[Path]:
    """The DVC cache entries that are `path` itself (a hard link to it)."""
    inode = path.stat().st_ino
    return [entry for entry in (root / ".dvc" / "cache").rglob("*") if entry.is_file() and entry.stat().st_ino == inode]


def test_outputs_link_to_the_cache_and_neither_a_rerun_nor_a_checkout_changes_a_cached_file(tmp_path,
                                                                                          write_image_folder):
    # .dvc/config's cache.type: a workspace output is the cache entry under a second name, not a copy of it (files
    # of a directory output too: DVC 3.67 links those only when hardlink is the first type). A stage writes by
    # renaming a new file into place (fileio), and DVC removes a stage's outputs before running it, so no write
    # reaches a cache entry through its link.
    photos = write_image_folder(tmp_path / "photos", {"cat": 6, "dog": 6})
    overrides = smoke_copy.merge(smoke_copy.SMOKE_OVERRIDES, {"data": {"source": "image_folder", "path": str(photos)}})
    root = smoke_copy.create(tmp_path / "project", source_root=PROJECT_ROOT, overrides=overrides, git=True)
    assert smoke_copy.dvc(root, "config", "cache.type").stdout.strip() == smoke_copy.project_cache_type(PROJECT_ROOT)
    smoke_copy.dvc(root, "repro", "download")
    smoke_copy.commit(root, "first data")
    (raw_image,) = (root / "data" / "raw").rglob("cat/0001.png")
    first = raw_image.read_bytes()
    (cached,) = _same_file_in_cache(root, raw_image)

    Image.new("RGB", (24, 24), (1, 2, 3)).save(photos / "cat" / "0001.png")
    assert _ran(smoke_copy.dvc(root, "repro", "download")) == [ALWAYS_RUN, "download"]
    assert raw_image.read_bytes() != first and cached.read_bytes() == first, "the cached image is unchanged"
    assert _same_file_in_cache(root, raw_image), "the new output is linked too"

    smoke_copy.run_git(root, "checkout", "HEAD", "--", "dvc.lock")
    smoke_copy.dvc(root, "checkout", "download")
    assert raw_image.read_bytes() == first and _same_file_in_cache(root, raw_image) == [cached]
