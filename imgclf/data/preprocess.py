"""Raw source -> decoded, split, sharded data set with its metadata and manifest (previews: `preview`).

Every image is decoded exactly once (in parallel worker processes) into a memory-mapped array, so memory
stays flat however large the folder; unreadable files are skipped and reported, never silently dropped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import errno
import io
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from imgclf import artifacts, fileio, progress
from imgclf.config import Params
from imgclf.data import images
from imgclf.data.formats.raw import RawExample
from imgclf.data.sources import iter_examples
from imgclf.errors import PreprocessError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_DECODE_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class Split:
    """Row numbers (into the decoded array) of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stratified_split(labels: np.ndarray, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..n-1 into (kept, held_out), holding out `fraction` of every class.

    Deterministic for a seed and the same labels. Each class with at least two images keeps one and holds
    out at least one, so small classes still appear on both sides.
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_held = round(len(members) * fraction)
        n_held = min(max(n_held, 1), len(members) - 1) if len(members) >= 2 else 0
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def cap_per_class(positions: np.ndarray, labels: np.ndarray, maximum: int | None, *,
                  seed: int) -> np.ndarray:
    """Keep at most `maximum` positions per class (a seeded sample); None keeps all."""
    if maximum is None:
        return positions
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels[positions]):
        members = positions[labels[positions] == label]
        if len(members) > maximum:
            members = np.sort(rng.choice(members, size=maximum, replace=False))
        kept.append(members)
    return np.sort(np.concatenate(kept)) if kept else positions


def small_classes(counts: Sequence[int], minimum: int) -> list[int]:
    return [label for label, count in enumerate(counts) if count < minimum]


def make_splits(labels: np.ndarray, official_test: np.ndarray, *, params: Params) -> Split:
    """Train/validation (and test, when the source has no official test split) by seeded stratification."""
    seed = params.seed
    if official_test.any():
        pool = np.flatnonzero(~official_test)
        test = np.flatnonzero(official_test)
    else:
        kept, held = stratified_split(labels, params.data.test_fraction, seed=seed)
        pool, test = kept, held
    kept, held = stratified_split(labels[pool], params.data.val_fraction, seed=seed + 1)
    train, val = pool[kept], pool[held]
    train = cap_per_class(train, labels, params.data.max_per_class, seed=seed + 2)
    return Split(train=train, val=val, test=test)


def _decode_one(args: tuple[str, int, str, int]) -> np.ndarray | str:
    path, image_size, resize, channels = args
    try:
        return images.decode_file(Path(path), image_size=image_size, resize=resize, channels=channels)
    except images.ImageDecodeError as error:
        return str(error)


def decode_all(examples: Sequence[RawExample], pixels: np.ndarray, *, image_size: int, resize: str,
               workers: int) -> dict[int, str]:
    """Decode every example into `pixels[i]`; return {position: reason} for the ones that failed."""
    channels = pixels.shape[-1]
    failures: dict[int, str] = {}
    file_positions = []
    for position, example in enumerate(examples):
        if example.pixels is not None:
            pixels[position] = images.resize_array(example.pixels, image_size=image_size, resize=resize)
        else:
            file_positions.append(position)
    jobs = [(str(examples[p].path), image_size, resize, channels) for p in file_positions]
    # 60,000 image files take minutes: a bar in a terminal, one line in logs.
    with progress.step("preprocess: decode images", total=len(jobs), summary=bool(jobs)) as counter:
        if workers > 1 and len(jobs) > _DECODE_CHUNK:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_decode_one, jobs, chunksize=_DECODE_CHUNK)
                _store(results, file_positions, pixels, failures, counter)
        else:
            _store(map(_decode_one, jobs), file_positions, pixels, failures, counter)
    return failures


def _store(results, positions, pixels, failures, counter: progress.Counter) -> None:
    for position, result in zip(positions, results, strict=True):
        if isinstance(result, str):
            failures[position] = result
        else:
            pixels[position] = result
        counter.update(1)


def run(params: Params, *, raw_dir: Path, out_dir: Path, workers: int | None = None) -> dict:
    """The preprocess stage: write shards, meta.json, manifest.csv and skipped.csv to out_dir."""
    from imgclf.data import tfdata  # TensorFlow only where the shards are written

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    source_info = fileio.read_json(raw_dir / artifacts.SOURCE_FILE)
    class_names, example_iter = iter_examples(raw_dir)
    examples = list(example_iter)
    if not examples:
        raise PreprocessError(f"{raw_dir}: the source holds no images; check data.source and data.path")
    channels = int(source_info["channels"])
    size = params.preprocess.image_size
    workers = workers or max(1, os.cpu_count() or 1)

    pixel_bytes = len(examples) * size * size * channels
    # The staging array, then the shards (raw pixels too) beside it, before the array is deleted.
    needed_mb = math.ceil(2 * pixel_bytes / (1 << 20)) + 1
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(out_dir.parent, needed_mb)
    with _disk_full_is_an_error(out_dir.parent, needed_mb), fileio.staged_directory(out_dir) as staging:
        pixels = np.lib.format.open_memmap(staging / "pixels.tmp.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(examples), size, size, channels))
        # Reserve the blocks now: a memory-mapped file that cannot grow on a full disk kills the process
        # with SIGBUS (no message, staging and worker processes left behind); this raises ENOSPC instead.
        with open(staging / "pixels.tmp.npy", "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        failures = decode_all(examples, pixels, image_size=size, resize=params.preprocess.resize,
                              workers=workers)
        not_fetched = source_info.get("skipped_files", [])  # image_folder: unsupported formats, FIFOs
        _report_skipped(failures, examples, staging / artifacts.SKIPPED_FILE, not_fetched=not_fetched)

        labels = np.array([example.label for example in examples], dtype=np.int64)
        official_test = np.array([example.split == "test" for example in examples])
        usable = np.ones(len(examples), dtype=bool)
        usable[list(failures)] = False
        class_names, labels, usable = _apply_class_minimum(class_names, labels, usable, params)
        _require_two_classes(class_names, labels, usable, raw_dir)

        positions = np.flatnonzero(usable)
        local = make_splits(labels[positions], official_test[positions], params=params)
        split = Split(train=positions[local.train], val=positions[local.val], test=positions[local.test])
        _check_split_coverage(split, labels, class_names)

        manifest_rows, shards, counts = [], {}, {}
        next_id = 0
        for name in SPLITS:
            members = getattr(split, name)
            ids = range(next_id, next_id + len(members))
            next_id += len(members)
            manifest_rows += [
                {"id": row_id, "split": name, "label": int(labels[p]), "class_name": class_names[labels[p]],
                 "original": examples[p].original}
                for row_id, p in zip(ids, members, strict=True)
            ]
            shards[name] = tfdata.write_shards(
                staging, name, ((pixels[p], labels[p], row_id) for row_id, p in zip(ids, members, strict=True)),
                count=len(members), examples_per_shard=params.preprocess.examples_per_shard)
            counts[name] = np.bincount(labels[members], minlength=len(class_names)).tolist()

        _write_manifest(manifest_rows, staging / artifacts.MANIFEST_FILE)
        meta = {
            "source": source_info["source"],
            "source_sha256": source_info.get("sha256"),
            "class_names": class_names,
            "num_classes": len(class_names),
            "image_size": size,
            "channels": channels,
            "resize": params.preprocess.resize,
            "counts": {name: int(sum(counts[name])) for name in SPLITS},
            "counts_per_class": counts,
            "skipped": len(failures) + len(not_fetched),
            "shards": shards,
        }
        fileio.atomic_write_json(staging / artifacts.META_FILE, meta)
        del pixels
        (staging / "pixels.tmp.npy").unlink()
    return meta


@contextlib.contextmanager
def _disk_full_is_an_error(folder: Path, needed_mb: int) -> Iterator[None]:
    """A full disk (ENOSPC) becomes a one-line PreprocessError saying how much space the stage needs."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise PreprocessError(f"no space left on {folder}, need about {needed_mb} MB; free some space "
                              "(or lower preprocess.image_size) and run the stage again") from error


def _check_free_space(folder: Path, needed_mb: int) -> None:
    free_mb = shutil.disk_usage(folder).free // (1 << 20)
    if free_mb < needed_mb:
        raise PreprocessError(f"no space left on {folder}, need about {needed_mb} MB ({free_mb} MB free); free "
                              "some space (or lower preprocess.image_size) and run the stage again")


def _report_skipped(failures: dict[int, str], examples: Sequence[RawExample], path: Path, *,
                    not_fetched: Sequence[dict[str, str]] = ()) -> None:
    """Write every skipped file with its reason (an empty report still has its header) and log each one: the
    images that could not be decoded (`original` under data/raw), then the files the download stage did not copy
    (`original` under data.path: an AVIF, a FIFO; source.json's `skipped_files`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["original", "reason"])
    for position in sorted(failures):
        writer.writerow([examples[position].original, failures[position]])
        log.warning("skipped unreadable image %s: %s", examples[position].original, failures[position])
    for item in not_fetched:
        writer.writerow([item["file"], item["reason"]])
    if failures or not_fetched:
        log.warning("skipped %d unreadable image(s); see %s", len(failures) + len(not_fetched), path.name)
    fileio.atomic_write_text(path, buffer.getvalue())


def _apply_class_minimum(class_names: list[str], labels: np.ndarray, usable: np.ndarray,
                         params: Params) -> tuple[list[str], np.ndarray, np.ndarray]:
    minimum = params.preprocess.min_images_per_class
    counts = np.bincount(labels[usable], minlength=len(class_names))
    too_small = small_classes(counts.tolist(), minimum)
    if not too_small:
        return class_names, labels, usable
    described = ", ".join(f"{class_names[label]!r} ({counts[label]})" for label in too_small)
    if params.preprocess.small_class_policy == "error":
        raise PreprocessError(
            f"classes with fewer than preprocess.min_images_per_class={minimum} readable images: {described}. "
            "Add images, lower preprocess.min_images_per_class, or set preprocess.small_class_policy: drop")
    log.warning("dropping classes with fewer than %d readable images: %s", minimum, described)
    kept = [label for label in range(len(class_names)) if label not in too_small]
    if len(kept) < 2:
        raise PreprocessError(f"fewer than 2 classes left after dropping small classes ({described})")
    remap = np.full(len(class_names), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    new_labels = remap[labels]
    return [class_names[label] for label in kept], new_labels, usable & (new_labels >= 0)


def _require_two_classes(class_names: list[str], labels: np.ndarray, usable: np.ndarray, raw_dir: Path) -> None:
    """A classifier needs two classes: with one, training "succeeds" at accuracy 1.0 and evaluation breaks."""
    present = [class_names[label] for label in np.unique(labels[usable])]
    if len(present) < 2:
        found = f"only {present[0]!r}" if present else "none"
        raise PreprocessError(f"{raw_dir}: a classifier needs at least 2 classes with readable images, found "
                              f"{found}; add a folder per class (data.path) or choose another data.source")


def _check_split_coverage(split: Split, labels: np.ndarray, class_names: list[str]) -> None:
    for name in ("train", "test"):
        present = set(np.unique(labels[getattr(split, name)]).tolist())
        missing = [class_names[label] for label in range(len(class_names)) if label not in present]
        if missing:
            raise PreprocessError(f"the {name} split has no images of: {', '.join(missing)}; add images "
                                  "or raise preprocess.min_images_per_class so such classes are dropped")


def _write_manifest(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "split", "label", "class_name", "original"])
    writer.writeheader()
    writer.writerows(rows)
    fileio.atomic_write_text(path, buffer.getvalue())

