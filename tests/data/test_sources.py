"""Data sources: binary and IDX parsing, image folder layouts, checksums, safe extraction, downloads.

Everything is offline: archives are generated in tmp_path and "downloads" come from a local HTTP server.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf import errors, fileio
from imgclf.data import archives, download, sources
from imgclf.data.formats import cifar, idx, raw, synthetic

pytestmark = pytest.mark.duration(seconds=4)  # about, under make test: orders the modules

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------------------------- helpers

def _tar_gz(archive: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def _cifar_batch(rng: np.random.Generator, count: int, *, coarse: bool = False) -> tuple[bytes, list]:
    """`count` records (label byte(s) + CHW pixels); returns the bytes and (label, HWC pixels) pairs."""
    records, expected = b"", []
    for _ in range(count):
        label = int(rng.integers(0, 10))
        pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        prefix = bytes([9 - label, label]) if coarse else bytes([label])  # cifar100: coarse, then fine
        records += prefix + pixels.transpose(2, 0, 1).tobytes()
        expected.append((label, pixels))
    return records, expected


def _cifar10_archive(tmp_path: Path, *, corrupt: str | None = None) -> tuple[Path, list]:
    """A CIFAR-10 shaped binary archive: 2 records per training batch, 3 test records."""
    rng = np.random.default_rng(0)
    files, expected = {}, []
    for name in [f"data_batch_{n}.bin" for n in range(1, 6)] + ["test_batch.bin"]:
        data, records = _cifar_batch(rng, 3 if name == "test_batch.bin" else 2)
        files[f"cifar-10-batches-bin/{name}"] = data + (b"\0" * 100 if name == corrupt else b"")
        split = "test" if name == "test_batch.bin" else "train"
        expected += [(split, label, pixels, f"cifar-10-batches-bin/{name}#{i}")
                     for i, (label, pixels) in enumerate(records)]
    files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    files["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    return _tar_gz(tmp_path / "cifar-10-binary.tar.gz", files), expected


def _fetch(tmp_path: Path, source: str, path: str | Path | None = None, sha256: str | None = None,
           **kwargs) -> dict:
    return sources.fetch_source(source=source, path=None if path is None else str(path), sha256=sha256,
                                raw_dir=tmp_path / "raw", download_dir=tmp_path / "downloads", seed=0,
                                **kwargs)


def _examples(raw_dir: Path) -> tuple[list[str], list[raw.RawExample]]:
    class_names, examples = sources.iter_examples(raw_dir)
    return class_names, list(examples)


def _leftovers(folder: Path) -> list[str]:
    """Temporary directories a failed fetch or extraction might have left behind."""
    return sorted(path.name for path in folder.iterdir() if ".tmp-" in path.name or ".old-" in path.name)


def _idx_images(images: np.ndarray) -> bytes:
    return gzip.compress(struct.pack(">IIII", 0x803, *images.shape) + images.tobytes())


def _idx_labels(labels: np.ndarray) -> bytes:
    return gzip.compress(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def _idx_folder(folder: Path, *, train: int = 5, test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images_name, labels_name = idx.IDX_FILES[split]
        (folder / images_name).write_bytes(_idx_images(images))
        (folder / labels_name).write_bytes(_idx_labels(labels))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


# -------------------------------------------------------------------------------------------------- CIFAR

def test_cifar10_binary_archive_is_parsed_into_hwc_pixels(tmp_path):
    archive, expected = _cifar10_archive(tmp_path)
    info = _fetch(tmp_path, "cifar10", archive)

    saved = json.loads((tmp_path / "raw" / "source.json").read_text())
    assert saved == info
    assert info["source"] == "cifar10" and info["format"] == "cifar_binary"
    assert info["class_names"] == CIFAR10_NAMES and info["channels"] == 3 and info["has_test_split"]
    assert info["sha256"] == fileio.sha256_file(archive) and info["origin"] == str(archive)
    assert info["num_examples"] == {"train": 10, "test": 3}
    assert str(tmp_path) not in json.dumps(info["files"])  # relative paths: the raw directory can move

    class_names, examples = _examples(tmp_path / "raw")
    assert class_names == CIFAR10_NAMES
    assert [(e.split, e.label, e.original) for e in examples] == [(s, lab, o) for s, lab, _, o in expected]
    for example, (_, _, pixels, _) in zip(examples, expected, strict=True):
        assert example.path is None and example.pixels.dtype == np.uint8
        np.testing.assert_array_equal(example.pixels, pixels)


def test_cifar_archive_with_correct_sha256_is_accepted(tmp_path):
    archive, _ = _cifar10_archive(tmp_path)
    digest = fileio.sha256_file(archive)
    info = _fetch(tmp_path, "cifar10", archive, sha256=digest.upper())
    assert info["sha256"] == digest


def test_wrong_sha256_stops_before_anything_is_extracted(tmp_path):
    archive, _ = _cifar10_archive(tmp_path)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "previous.txt").write_text("kept")
    with pytest.raises(errors.DataSourceError, match=r"data\.sha256") as caught:
        _fetch(tmp_path, "cifar10", archive, sha256="0" * 64)
    assert fileio.sha256_file(archive) in str(caught.value) and "0" * 64 in str(caught.value)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["previous.txt"]  # old raw_dir untouched
    assert _leftovers(tmp_path) == []


def test_malformed_sha256_is_refused(tmp_path):
    archive, _ = _cifar10_archive(tmp_path)
    with pytest.raises(errors.DataSourceError, match="64 hex"):
        _fetch(tmp_path, "cifar10", archive, sha256="abc")


def test_cifar100_uses_the_fine_label(tmp_path):
    rng = np.random.default_rng(3)
    train, train_records = _cifar_batch(rng, 4, coarse=True)
    test, test_records = _cifar_batch(rng, 2, coarse=True)
    fine = [f"fine_{i:02d}" for i in range(100)]
    archive = _tar_gz(tmp_path / "cifar-100-binary.tar.gz", {
        "cifar-100-binary/train.bin": train, "cifar-100-binary/test.bin": test,
        "cifar-100-binary/fine_label_names.txt": "\n".join(fine).encode(),
        "cifar-100-binary/coarse_label_names.txt": b"coarse\n",
    })
    info = _fetch(tmp_path, "cifar100", archive)
    assert info["label_bytes"] == 2 and info["num_examples"] == {"train": 4, "test": 2}
    class_names, examples = _examples(tmp_path / "raw")
    assert class_names == fine
    assert [e.label for e in examples] == [label for label, _ in train_records + test_records]
    np.testing.assert_array_equal(examples[-1].pixels, test_records[-1][1])


def test_truncated_cifar_batch_is_an_error(tmp_path):
    archive, _ = _cifar10_archive(tmp_path, corrupt="data_batch_3.bin")
    with pytest.raises(errors.DataSourceError, match=r"data_batch_3\.bin.*truncated"):
        _fetch(tmp_path, "cifar10", archive)
    assert not (tmp_path / "raw").exists() and _leftovers(tmp_path) == []


def test_cifar_batch_damaged_after_download_fails_when_read(tmp_path):
    archive, _ = _cifar10_archive(tmp_path)
    _fetch(tmp_path, "cifar10", archive)
    batch = tmp_path / "raw" / "cifar-10-batches-bin" / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-7])
    _, examples = sources.iter_examples(tmp_path / "raw")
    with pytest.raises(errors.DataSourceError, match=r"test_batch\.bin"):
        list(examples)


def test_pickled_python_version_is_refused(tmp_path):
    archive = _tar_gz(tmp_path / "cifar-10-python.tar.gz", {"cifar-10-batches-py/data_batch_1": b"pickle"})
    with pytest.raises(errors.DataSourceError, match="python version"):
        _fetch(tmp_path, "cifar10", archive)


def test_cifar10_download_is_verified_and_cached(tmp_path, http_server, monkeypatch):
    archive, _ = _cifar10_archive(http_server.root)
    digest = fileio.sha256_file(archive)
    spec = cifar.CIFAR_SOURCES["cifar10"]
    local = dataclasses.replace(spec, url=f"{http_server.url}/{archive.name}", sha256=digest)
    monkeypatch.setitem(cifar.CIFAR_SOURCES, "cifar10", local)
    info = _fetch(tmp_path, "cifar10")
    assert info["origin"].startswith(http_server.url) and info["sha256"] == digest
    assert (tmp_path / "downloads" / archive.name).is_file()
    _fetch(tmp_path, "cifar10")
    assert len(http_server.requests) == 1  # the second run reused the verified download


def test_official_digests_are_well_formed():
    digests = [spec.sha256 for spec in cifar.CIFAR_SOURCES.values()]
    digests += [d for spec in idx.IDX_SOURCES.values() for d in spec.sha256.values() if d is not None]
    assert digests and all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in digests)


# ---------------------------------------------------------------------------------------------------- IDX

def test_mnist_idx_files_from_a_local_directory(tmp_path):
    arrays = _idx_folder(tmp_path / "mnist")
    info = _fetch(tmp_path, "mnist", tmp_path / "mnist")
    assert info["format"] == "idx" and info["channels"] == 1 and info["has_test_split"]
    assert info["class_names"] == [str(d) for d in range(10)]
    assert info["num_examples"] == {"train": 5, "test": 3}
    assert info["sha256"] == idx.idx_manifest_sha256(info["files_sha256"])

    _, examples = _examples(tmp_path / "raw")
    assert [e.split for e in examples] == ["train"] * 5 + ["test"] * 3
    assert [e.label for e in examples] == arrays["train_labels"].tolist() + arrays["test_labels"].tolist()
    assert examples[0].original == "train-images-idx3-ubyte.gz#0"
    assert examples[0].pixels.shape == (28, 28, 1)
    np.testing.assert_array_equal(examples[6].pixels[..., 0], arrays["test_images"][1])


def test_mnist_sha256_pins_the_manifest_of_the_four_files(tmp_path):
    _idx_folder(tmp_path / "mnist")
    digest = _fetch(tmp_path, "mnist", tmp_path / "mnist")["sha256"]
    assert _fetch(tmp_path, "mnist", tmp_path / "mnist", sha256=digest)["sha256"] == digest
    with pytest.raises(errors.DataSourceError, match="manifest"):
        _fetch(tmp_path, "mnist", tmp_path / "mnist", sha256="1" * 64)


def test_fashion_mnist_names_are_readable_and_file_safe(tmp_path):
    _idx_folder(tmp_path / "fashion")
    names = _fetch(tmp_path, "fashion_mnist", tmp_path / "fashion")["class_names"]
    assert names[0] == "T-shirt_top" and names[-1] == "Ankle_boot" and len(names) == 10
    assert not any("/" in name or " " in name for name in names)


def test_idx_with_a_wrong_magic_or_missing_bytes_is_an_error(tmp_path):
    _idx_folder(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    good = labels.read_bytes()
    labels.write_bytes(gzip.compress(struct.pack(">II", 0x803, 5) + bytes(5)))
    with pytest.raises(errors.DataSourceError, match="magic"):
        _fetch(tmp_path, "mnist", tmp_path / "mnist")
    labels.write_bytes(gzip.compress(gzip.decompress(good)[:-1]))
    with pytest.raises(errors.DataSourceError, match="truncated"):
        _fetch(tmp_path, "mnist", tmp_path / "mnist")


def test_idx_directory_missing_a_file_names_it(tmp_path):
    _idx_folder(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(errors.DataSourceError, match=r"t10k-labels-idx1-ubyte\.gz"):
        _fetch(tmp_path, "mnist", tmp_path / "mnist")


# ------------------------------------------------------------------------------------------- image folder

def _originals(raw_dir: Path) -> list[tuple[str, int, str]]:
    _, examples = _examples(raw_dir)
    return [(e.split, e.label, e.original) for e in examples]


def test_image_folder_with_train_and_test(write_image_folder, tmp_path):
    photos = tmp_path / "photos"
    write_image_folder(photos, {"cat": 3, "dog": 2}, split="train")
    write_image_folder(photos, {"cat": 1, "dog": 1}, split="test")
    info = _fetch(tmp_path, "image_folder", photos)
    assert info["has_test_split"] and info["class_names"] == ["cat", "dog"] and info["sha256"] is None
    assert info["num_examples"] == {"train": 5, "test": 2}
    assert _originals(tmp_path / "raw") == [
        ("train", 0, "images/train/cat/0000.png"), ("train", 0, "images/train/cat/0001.png"),
        ("train", 0, "images/train/cat/0002.png"), ("train", 1, "images/train/dog/0000.png"),
        ("train", 1, "images/train/dog/0001.png"), ("test", 0, "images/test/cat/0000.png"),
        ("test", 1, "images/test/dog/0000.png"),
    ]
    _, examples = _examples(tmp_path / "raw")
    assert all(e.path.is_absolute() and e.path.is_file() and e.pixels is None for e in examples)


def test_flat_layout_ignores_hidden_and_non_image_files_but_keeps_corrupt_images(write_image_folder, tmp_path):
    photos = write_image_folder(tmp_path / "photos", {"b_dogs": 2, "a_cats": 2})
    (photos / "a_cats" / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "a_cats" / "UPPER.JPG").write_bytes(b"not a jpeg either")
    (photos / "a_cats" / "._0000.png").write_bytes(b"macOS resource fork")
    (photos / "a_cats" / "notes.txt").write_text("ignored")
    (photos / "b_dogs" / "nested").mkdir()
    Image.new("RGB", (4, 4)).save(photos / "b_dogs" / "nested" / "deep.png")
    (photos / ".hidden_class").mkdir()
    Image.new("RGB", (4, 4)).save(photos / ".hidden_class" / "x.png")
    (photos / "README.md").write_text("a file at the class level")

    info = _fetch(tmp_path, "image_folder", photos)
    assert info["class_names"] == ["a_cats", "b_dogs"] and not info["has_test_split"]
    assert info["test_dir"] is None
    assert [o for _, _, o in _originals(tmp_path / "raw")] == [
        "images/train/a_cats/0000.png", "images/train/a_cats/0001.png", "images/train/a_cats/UPPER.JPG",
        "images/train/a_cats/broken.jpg", "images/train/b_dogs/0000.png", "images/train/b_dogs/0001.png",
        "images/train/b_dogs/nested/deep.png",
    ]
    assert not (tmp_path / "raw" / "images" / "train" / "a_cats" / "notes.txt").exists()


def test_image_folder_from_tar_gz_with_a_wrapper_folder_and_from_zip(write_image_folder, tmp_path):
    photos = tmp_path / "photos"
    write_image_folder(photos / "my-data" / "train", {"cat": 2, "dog": 2})
    write_image_folder(photos / "my-data" / "test", {"dog": 1})
    (photos / ".DS_Store").write_bytes(b"")
    archive = tmp_path / "photos.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photos, arcname=".")
    info = _fetch(tmp_path, "image_folder", archive, sha256=fileio.sha256_file(archive))
    assert info["has_test_split"] and info["class_names"] == ["cat", "dog"]
    assert info["num_examples"] == {"train": 4, "test": 1} and info["sha256"] == fileio.sha256_file(archive)
    from_tar = _originals(tmp_path / "raw")
    assert not (tmp_path / "raw" / ".extracted").exists()

    zipped = tmp_path / "photos.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        for file in sorted(photos.rglob("*")):
            bundle.write(file, file.relative_to(photos).as_posix())
        bundle.writestr("__MACOSX/my-data/._cat", b"")
    _fetch(tmp_path, "image_folder", zipped)
    assert _originals(tmp_path / "raw") == from_tar


def test_single_wrapping_folder_is_descended_in_a_flat_layout(write_image_folder, tmp_path):
    write_image_folder(tmp_path / "photos" / "wrapper", {"cat": 1, "dog": 1})
    info = _fetch(tmp_path, "image_folder", tmp_path / "photos")
    assert info["class_names"] == ["cat", "dog"] and not info["has_test_split"]


def test_test_class_missing_from_train_is_named(write_image_folder, tmp_path):
    write_image_folder(tmp_path / "photos", {"cat": 1}, split="train")
    write_image_folder(tmp_path / "photos", {"cat": 1, "zebra": 1}, split="test")
    with pytest.raises(errors.DataSourceError, match="zebra"):
        _fetch(tmp_path, "image_folder", tmp_path / "photos")


def test_folder_without_class_folders_explains_the_layout(tmp_path):
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "photos" / "loose.png")
    with pytest.raises(errors.DataSourceError, match=r"<root>/<class>/<images>"):
        _fetch(tmp_path, "image_folder", tmp_path / "photos")


@pytest.mark.parametrize(("path", "sha256", "message"), [
    (None, None, "needs data.path"),
    ("does/not/exist", None, "does not exist"),
    ("photos", "a" * 64, "directory"),
])
def test_image_folder_path_mistakes_say_what_to_do(write_image_folder, tmp_path, monkeypatch, path, sha256, message):
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "photos", {"cat": 1, "dog": 1})
    with pytest.raises(errors.DataSourceError, match=message):
        _fetch(tmp_path, "image_folder", path, sha256=sha256)


def test_unknown_source_lists_the_known_ones(tmp_path):
    with pytest.raises(errors.DataSourceError, match="image_folder"):
        _fetch(tmp_path, "imagenet")


def test_raw_dir_is_replaced_and_can_move(write_image_folder, tmp_path):
    write_image_folder(tmp_path / "photos", {"cat": 1, "dog": 1})
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "stale.txt").write_text("from an earlier run")
    _fetch(tmp_path, "image_folder", tmp_path / "photos")
    assert not (tmp_path / "raw" / "stale.txt").exists() and _leftovers(tmp_path) == []
    os.rename(tmp_path / "raw", tmp_path / "moved")
    _, examples = _examples(tmp_path / "moved")
    assert len(examples) == 2 and all(e.path.is_file() for e in examples)


def test_image_folder_from_a_url(write_image_folder, tmp_path, http_server):
    write_image_folder(tmp_path / "photos", {"cat": 2, "dog": 2})
    archive = http_server.root / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "photos", arcname="photos")
    info = _fetch(tmp_path, "image_folder", f"{http_server.url}/photos.tar.gz",
                  sha256=fileio.sha256_file(archive))
    assert info["num_examples"]["train"] == 4 and info["origin"] == f"{http_server.url}/photos.tar.gz"


# ------------------------------------------------------------------------------------------ safe extract

def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    data = b"" if kind != tarfile.REGTYPE else b"payload"
    info.size = len(data)
    return info, data


MALICIOUS_TARS = {
    "absolute": [_member("/tmp/imgclf-absolute-evil.txt")],
    "dotdot": [_member("../evil.txt")],
    "nested_dotdot": [_member("ok/../../evil.txt")],
    "symlink_out": [_member("passwd", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink_up": [_member("up", tarfile.SYMTYPE, "../evil.txt")],
    "hardlink_out": [_member("hard", tarfile.LNKTYPE, "../outside.txt")],
    "hardlink_absolute": [_member("hard", tarfile.LNKTYPE, "/etc/passwd")],
    # each link points inside by name, but together "a" resolves to the target's parent
    "symlink_chain": [_member("sub/", tarfile.DIRTYPE), _member("a", tarfile.SYMTYPE, "sub/l/.."),
                      _member("sub/l", tarfile.SYMTYPE, "..")],
    "device": [_member("null", tarfile.CHRTYPE)],
    "fifo": [_member("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
def test_malicious_tar_members_are_refused(tmp_path, case):
    (tmp_path / "outside.txt").write_text("outside")
    archive = tmp_path / "evil.tar"
    members = [_member("fine.txt"), *MALICIOUS_TARS[case]]
    with tarfile.open(archive, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(errors.UnsafeArchiveError) as caught:
        archives.safe_extract(archive, tmp_path / "target")
    assert repr(members[-1][0].name if case != "symlink_chain" else "a") in str(caught.value)
    assert not (tmp_path / "target").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside it either
    assert (tmp_path / "outside.txt").read_text() == "outside"
    assert not Path("/tmp/imgclf-absolute-evil.txt").exists()


def test_malicious_archive_leaves_raw_dir_unwritten(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in [_member("cat/0.png"), _member("../evil.png")]:
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(errors.UnsafeArchiveError, match=re.escape("'../evil.png'")):
        _fetch(tmp_path, "image_folder", archive)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "evil.png").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["../evil", "/abs_evil", "a/../../evil", "..\\evil"])
def test_malicious_zip_members_are_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("fine.txt", b"ok")
        bundle.writestr(zipfile.ZipInfo(name), b"evil")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(errors.UnsafeArchiveError, match=re.escape(repr(name))):
        archives.safe_extract(archive, tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_links_inside_the_archive_are_kept(tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        for info, data in [_member("dir/", tarfile.DIRTYPE), _member("dir/file.txt"),
                           _member("dir/alias.txt", tarfile.SYMTYPE, "file.txt"),
                           _member("top.txt", tarfile.SYMTYPE, "dir/../dir/file.txt"),
                           _member("hard.txt", tarfile.LNKTYPE, "dir/file.txt")]:
            tar.addfile(info, io.BytesIO(data))
    archives.safe_extract(archive, tmp_path / "target")
    for name in ("dir/alias.txt", "top.txt", "hard.txt"):
        assert (tmp_path / "target" / name).read_bytes() == b"payload"
    assert (tmp_path / "target" / "dir" / "alias.txt").is_symlink()


def test_corrupt_archive_is_a_data_source_error(tmp_path):
    archive, _ = _cifar10_archive(tmp_path)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(errors.DataSourceError, match="corrupt"):
        archives.safe_extract(truncated, tmp_path / "target")
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(errors.DataSourceError, match=r"not a \.tar"):
        archives.safe_extract(tmp_path / "plain.txt", tmp_path / "target")
    assert not (tmp_path / "target").exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- download

def test_download_verifies_and_renames_into_place(tmp_path, http_server):
    (http_server.root / "data.bin").write_bytes(b"x" * 3000)
    digest = hashlib.sha256(b"x" * 3000).hexdigest()
    destination = tmp_path / "downloads" / "data.bin"
    assert download.download(f"{http_server.url}/data.bin", destination, sha256=digest) == destination
    assert destination.read_bytes() == b"x" * 3000
    assert sorted(path.name for path in destination.parent.iterdir()) == ["data.bin"]  # no partial file left


def test_download_checksum_mismatch_removes_the_partial_file(tmp_path, http_server):
    (http_server.root / "data.bin").write_bytes(b"tampered")
    destination = tmp_path / "downloads" / "data.bin"
    expected = hashlib.sha256(b"original").hexdigest()
    with pytest.raises(errors.DataSourceError, match=r"data\.sha256") as caught:
        download.download(f"{http_server.url}/data.bin", destination, sha256=expected)
    assert expected in str(caught.value) and hashlib.sha256(b"tampered").hexdigest() in str(caught.value)
    assert not destination.exists() and list(destination.parent.iterdir()) == []  # no partial file left


def test_download_reuses_a_good_file_and_replaces_a_bad_one(tmp_path, http_server):
    (http_server.root / "data.bin").write_bytes(b"fresh")
    digest = hashlib.sha256(b"fresh").hexdigest()
    destination = tmp_path / "data.bin"
    destination.write_bytes(b"fresh")
    download.download(f"{http_server.url}/data.bin", destination, sha256=digest)
    assert http_server.requests == []

    destination.write_bytes(b"stale")
    download.download(f"{http_server.url}/data.bin", destination, sha256=digest)
    assert http_server.requests == ["/data.bin"] and destination.read_bytes() == b"fresh"


def test_leftover_part_file_is_never_taken_as_complete(tmp_path, http_server):
    (http_server.root / "data.bin").write_bytes(b"complete")
    destination = tmp_path / "data.bin"
    destination.with_name(".data.bin.x1y2z3.part").write_bytes(b"compl")  # a killed earlier download
    download.download(f"{http_server.url}/data.bin", destination, sha256=None)
    assert http_server.requests == ["/data.bin"] and destination.read_bytes() == b"complete"


def test_download_errors_say_what_failed(tmp_path, http_server):
    with pytest.raises(errors.DataSourceError, match="HTTP 404"):
        download.download(f"{http_server.url}/missing.bin", tmp_path / "missing.bin", sha256=None)
    with pytest.raises(errors.DataSourceError, match="http"):
        download.download("ftp://example.org/x.tar.gz", tmp_path / "x.tar.gz", sha256=None)
    assert list(tmp_path.glob("*.part")) == []


# --------------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_with_the_requested_counts(tmp_path):
    first = _fetch(tmp_path / "one", "synthetic", synthetic_classes=3, synthetic_per_class=8,
                   synthetic_image_size=16)
    second = _fetch(tmp_path / "two", "synthetic", synthetic_classes=3, synthetic_per_class=8,
                    synthetic_image_size=16)
    assert first == {**second, "origin": first["origin"]} and first["sha256"] == second["sha256"]
    assert first["format"] == "image_folder" and first["has_test_split"]
    assert first["class_names"] == ["class_0", "class_1", "class_2"]
    assert first["num_examples"] == {"train": 24, "test": 6}
    _, examples = _examples(tmp_path / "one" / "raw")
    assert [e.original for e in examples] == [e.original for e in _examples(tmp_path / "two" / "raw")[1]]
    with Image.open(examples[0].path) as image:
        assert image.size == (16, 16) and image.mode == "RGB"

    other = sources.fetch_source(source="synthetic", path=None, sha256=None, raw_dir=tmp_path / "other",
                                 download_dir=tmp_path / "downloads", seed=1, synthetic_classes=3,
                                 synthetic_per_class=8, synthetic_image_size=16)
    assert other["sha256"] != first["sha256"]


def test_synthetic_classes_are_learnable(tmp_path):
    _fetch(tmp_path, "synthetic", synthetic_classes=4, synthetic_per_class=20, synthetic_image_size=16)
    _, examples = _examples(tmp_path / "raw")

    def features(example):  # mean colour: even a nearest-centroid rule should beat chance by far
        return np.asarray(Image.open(example.path), dtype=float).mean(axis=(0, 1))

    train = [(features(e), e.label) for e in examples if e.split == "train"]
    centroids = np.array([np.mean([f for f, label in train if label == k], axis=0) for k in range(4)])
    test = [(features(e), e.label) for e in examples if e.split == "test"]
    correct = sum(int(np.argmin(((centroids - f) ** 2).sum(axis=1)) == label) for f, label in test)
    assert correct / len(test) >= 0.8


def test_many_synthetic_class_names_sort_in_label_order():
    names = synthetic.synthetic_class_names(12)
    assert names == sorted(names) and names[0] == "class_00" and names[11] == "class_11"


# ------------------------------------------------------------------------------------------------- order

def test_iter_examples_order_is_deterministic(write_image_folder, tmp_path):
    photos = tmp_path / "photos"
    write_image_folder(photos, {"b": 3, "a": 2, "c": 1}, split="train")
    write_image_folder(photos, {"c": 1, "a": 1}, split="test")
    _fetch(tmp_path, "image_folder", photos)
    first, second = _originals(tmp_path / "raw"), _originals(tmp_path / "raw")
    assert first == second
    keys = [(split != "train", label, original) for split, label, original in first]
    assert keys == sorted(keys)


def test_missing_source_json_says_to_run_the_download_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        sources.iter_examples(tmp_path / "nowhere")


def test_the_sources_are_listed_once_and_each_has_a_reader():
    """imgclf.config.DataSource is the list (params validation, `sources.SOURCES`); each name has its format."""
    assert set(sources.SOURCES) == {*cifar.CIFAR_SOURCES, *idx.IDX_SOURCES, "image_folder", "synthetic"}
