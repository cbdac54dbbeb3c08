"""Benchmark: train/test duplicates in CIFAR-10 (the shared JPEG archive), found as the pipeline finds them.

Every image of the archive goes once through the shared EfficientNet-Lite0 backbone (96 px, pooled features,
as the extract_features stage caches them; cached under --cache so reruns skip it), then
`imgclf.data.duplicates` finds, for each test image, its most similar training image by blocked cosine
similarity, and every exact (pixel-identical) pair. Writes `bench/results/cifar10-duplicates.csv` (test_file,
train_file, similarity: paths inside the archive) and `bench/results/cifar10-duplicates.json` (counts, timings,
the threshold's calibration on planted copies), and a gallery PNG of pairs to look at.

Usage: .venv/bin/python -m bench.duplicates [--cache /tmp/bench-duplicates] [--input-size 96]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import provenance
from bench.common import ARCHIVE, BACKBONE, ROOT
from imgclf.data import duplicates

RESULTS = ROOT / "bench" / "results"
PLANTED = 500  # training images copied with each planted edit to calibrate the threshold
CANDIDATE_THRESHOLDS = (0.75, 0.8, 0.82, 0.85, 0.88, 0.9)


def read_archive(path: Path) -> tuple[list[str], np.ndarray]:
    """Every image's path inside the archive (sorted) and its decoded 32x32 RGB pixels."""
    found = {}
    # In stream order: a gzip stream seeks backwards only by decompressing again from the start.
    with tarfile.open(path, "r|gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg"):
                with Image.open(io.BytesIO(archive.extractfile(member).read())) as image:
                    found[member.name] = np.asarray(image.convert("RGB"), dtype=np.uint8)
    names = sorted(found)
    pixels = [found[name] for name in names]
    return names, np.stack(pixels)


def make_extractor(input_size: int):
    from imgclf.config import TransferConfig
    from imgclf.training import backbones, features, transfer_model

    config = TransferConfig(backbone=str(BACKBONE), input_size=input_size)
    backbone, preprocessing = features.load_backbone(backbones.resolve(config), config)
    backbone.trainable = False
    return transfer_model.build_feature_extractor(backbone, preprocessing, input_shape=(32, 32, 3),
                                                  input_size=input_size)


def extract(extractor, pixels: np.ndarray, *, batch_size: int = 250) -> np.ndarray:
    batches = [np.asarray(extractor.predict_on_batch(pixels[start:start + batch_size].astype(np.float32)))
               for start in range(0, len(pixels), batch_size)]
    return np.concatenate(batches).astype(np.float32)


def features(cache: Path, names: list[str], pixels: np.ndarray, input_size: int) -> tuple[np.ndarray, float]:
    path = cache / f"features-{input_size}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return saved["features"], float(saved["seconds"])
    started = time.perf_counter()
    result = extract(make_extractor(input_size), pixels)
    seconds = time.perf_counter() - started
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=result, seconds=seconds, names=np.asarray(names))
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench-duplicates"))
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--threshold", type=float, default=0.9, help="duplicates.similarity_threshold")
    parser.add_argument("--calibrate-only", action="store_true", help="stop after the planted copies")
    parser.add_argument("--features-only", action="store_true", help="stop after caching the features")
    arguments = parser.parse_args()
    run = provenance.start()
    if not ARCHIVE.is_file() or not BACKBONE.is_file():
        sys.exit("skipped: the shared CIFAR-10 archive or Lite0 backbone is absent")
    started = time.perf_counter()
    names, pixels = read_archive(ARCHIVE)
    decode_seconds = time.perf_counter() - started
    feats, feature_seconds = features(arguments.cache, names, pixels, arguments.input_size)
    print(f"{len(names)} images decoded in {decode_seconds:.1f} s, features in {feature_seconds:.1f} s", flush=True)
    if arguments.features_only:
        return
    report(arguments, names, pixels, feats, decode_seconds=decode_seconds, feature_seconds=feature_seconds,
           run=run)


# The planted edits of the threshold's calibration: what a copy in a photo folder looks like after the pipeline
# has brought it back to 32x32 (the list: resized, re-encoded, shifted, cropped, colour tweaked).
def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels)


def resized(pixels: np.ndarray) -> np.ndarray:
    smaller = _pil(pixels).resize((24, 24), Image.Resampling.BILINEAR)
    return np.asarray(smaller.resize((32, 32), Image.Resampling.BILINEAR))


def jpeg50(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    _pil(pixels).save(buffer, format="JPEG", quality=50)
    return np.asarray(Image.open(buffer).convert("RGB"))


def shifted(pixels: np.ndarray) -> np.ndarray:
    padded = np.pad(pixels, ((2, 0), (2, 0), (0, 0)), mode="edge")
    return padded[:32, :32]


def cropped(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(_pil(pixels[2:30, 2:30]).resize((32, 32), Image.Resampling.BICUBIC))


def colour(pixels: np.ndarray) -> np.ndarray:
    from PIL import ImageEnhance

    return np.asarray(ImageEnhance.Color(ImageEnhance.Brightness(_pil(pixels)).enhance(1.15)).enhance(0.8))


EDITS = {"resized 24 px and back": resized, "JPEG quality 50": jpeg50, "2-pixel shift": shifted,
         "crop 2 px a side": cropped, "brightness +15%, saturation -20%": colour}


def calibrate(extractor_size: int, pixels: np.ndarray, train: np.ndarray, train_views: list[np.ndarray], *,
              cache: Path, seed: int = 0) -> dict:
    """Each edit of PLANTED training images, searched among all training images: its similarity to its original
    and whether the original is its nearest neighbour, by backbone features alone (centred, uncentred), by
    thumbnails alone, and by their mean (what the pipeline uses)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train, size=PLANTED, replace=False))
    edited = np.concatenate([np.stack([edit(pixels[row]) for row in chosen]) for edit in EDITS.values()])
    saved = cache / f"planted-{extractor_size}-{seed}.npy"
    if not saved.is_file():
        np.save(saved, extract(make_extractor(extractor_size), edited))
    edited_views = [np.load(saved), duplicates.thumbnails(edited)]
    positions = np.tile(np.searchsorted(train, chosen), len(EDITS))
    result = {}
    methods = {"features_centred": ([0], True), "features_uncentred": ([0], False), "thumbnails": ([1], True),
               "features_and_thumbnails": ([0, 1], True)}
    for method, (used, centred) in methods.items():
        centres = [train_views[view].mean(axis=0) if centred else None for view in used]
        references = duplicates.describe([train_views[view] for view in used], centres)
        queries = duplicates.describe([edited_views[view] for view in used], centres)
        matches = duplicates.search(queries, references, threshold=1.01, twins=0)
        to_original = np.einsum("ij,ij->i", queries, references[positions])
        per_edit = {}
        for number, name in enumerate(EDITS):
            part = slice(number * PLANTED, (number + 1) * PLANTED)
            per_edit[name] = {"nearest_is_original": float(np.mean(matches.best[part] == positions[part])),
                              "similarity_min": float(to_original[part].min()),
                              "similarity_p01": float(np.quantile(to_original[part], 0.01)),
                              "similarity_p05": float(np.quantile(to_original[part], 0.05)),
                              "similarity_median": float(np.median(to_original[part])),
                              "found_at": {f"{value:.2f}": float(np.mean(to_original[part] >= value))
                                           for value in CANDIDATE_THRESHOLDS}}
        result[method] = {"edits": per_edit, "all_p01": float(np.quantile(to_original, 0.01)),
                          "all_p05": float(np.quantile(to_original, 0.05))}
    return result


def gallery(path: Path, rows: list[tuple[np.ndarray, np.ndarray, str]], *, columns: int = 6, scale: int = 3) -> None:
    """Pairs side by side (test left, training right) with their similarity under each: a PNG to look at."""
    from PIL import ImageDraw

    side = 32 * scale
    cell_w, cell_h = 2 * side + 12, side + 16
    lines = -(-len(rows) // columns)
    sheet = Image.new("RGB", (columns * cell_w, max(lines, 1) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for number, (test, train, caption) in enumerate(rows):
        x, y = (number % columns) * cell_w, (number // columns) * cell_h
        sheet.paste(_pil(test).resize((side, side), Image.Resampling.NEAREST), (x, y))
        sheet.paste(_pil(train).resize((side, side), Image.Resampling.NEAREST), (x + side + 2, y))
        draw.text((x + 2, y + side + 2), caption, fill="black")
    sheet.save(path)


def probe_accuracies(feats, labels, test, train, twins_rows) -> dict:
    """A linear probe (the transfer head's shape: logistic regression on the pooled features) and a 1-nearest-
    neighbour classifier (pure memory) on the features, on all test images and on those without a training twin,
    with the pipeline's paired comparison of the two on each set."""
    from sklearn.linear_model import LogisticRegression

    from imgclf.evaluation import paired_tests

    centre = feats[train].mean(axis=0)
    scale = feats[train].std(axis=0) + 1e-6
    probe = LogisticRegression(max_iter=300, C=0.5)
    started = time.perf_counter()
    probe.fit((feats[train] - centre) / scale, labels[train])
    probe_right = probe.predict((feats[test] - centre) / scale) == labels[test]
    probe_seconds = time.perf_counter() - started
    references = duplicates.unit_rows(feats[train], centre=centre)
    queries = duplicates.unit_rows(feats[test], centre=centre)
    nearest = duplicates.search(queries, references, threshold=1.01, twins=0).best
    knn_right = labels[train][nearest] == labels[test]
    clean = np.ones(len(test), dtype=bool)
    clean[twins_rows] = False
    result = {"probe_seconds": round(probe_seconds, 1)}
    for name, mask in (("all", np.ones(len(test), bool)), ("deduplicated", clean), ("twins_only", ~clean)):
        summary = paired_tests.significance(knn_right[mask], probe_right[mask], resamples=1000, confidence_level=0.95,
                                     seed=0)
        result[name] = {"test_images": int(mask.sum()), "nearest_neighbour_accuracy": summary["scratch_accuracy"],
                        "linear_probe_accuracy": summary["transfer_accuracy"],
                        "mcnemar_p_value": summary["mcnemar"]["p_value"]}
    return result


def report(arguments, names, pixels, feats, *, decode_seconds: float, feature_seconds: float,
           run: provenance.Run) -> None:
    names_array = np.asarray(names)
    test = np.flatnonzero(np.char.startswith(names_array, "test/"))
    train = np.flatnonzero(np.char.startswith(names_array, "train/"))
    labels = np.unique([name.split("/")[1] for name in names], return_inverse=True)[1]
    digests = duplicates.pixel_digests(pixels)
    thumbs = duplicates.thumbnails(pixels)
    train_views, test_views = [feats[train], thumbs[train]], [feats[test], thumbs[test]]
    calibration = calibrate(arguments.input_size, pixels, train, train_views, cache=arguments.cache)
    print(json.dumps(calibration, indent=1), flush=True)
    if arguments.calibrate_only:
        return
    threshold = arguments.threshold
    started = time.perf_counter()
    twins = duplicates.cross_twins(test_views, train_views, test_digests=[digests[row] for row in test],
                                   train_digests=[digests[row] for row in train], threshold=threshold)
    cross_seconds = time.perf_counter() - started
    centres = [view.mean(axis=0) for view in train_views]
    started = time.perf_counter()
    within_train = duplicates.images_with_twin_within(train_views, digests=[digests[row] for row in train],
                                                      threshold=threshold, centres=centres)
    within_train_seconds = time.perf_counter() - started
    within_test = duplicates.images_with_twin_within(test_views, digests=[digests[row] for row in test],
                                                     threshold=threshold, centres=centres)
    # Every test image's best training match, for the distribution and the galleries below the threshold.
    best = duplicates.search(duplicates.describe(test_views, centres), duplicates.describe(train_views, centres),
                             threshold=1.01, twins=0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = sorted({(int(t), int(r), float(s)) for t, r, s in zip(twins.test, twins.train, twins.similarity,
                                                                   strict=True)})
    lines = ["test_file,train_file,similarity"] + [f"{names[test[t]]},{names[train[r]]},{s:.4f}" for t, r, s in rows]
    (RESULTS / "cifar10-duplicates.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    quantiles = {f"{q:g}": float(np.quantile(best.best_similarity, q)) for q in (0.5, 0.9, 0.95, 0.97, 0.99, 0.999)}
    above = {f"{value:.2f}": int(np.sum(best.best_similarity >= value)) for value in np.arange(0.70, 1.0, 0.02)}
    # Galleries: the surest pairs, the pairs nearest above the threshold, and the best matches just below it.
    order = np.argsort(-best.best_similarity)
    just_above = [t for t in order[::-1] if best.best_similarity[t] >= threshold][:24]  # the least similar first
    just_below = [t for t in order if threshold - 0.05 <= best.best_similarity[t] < threshold][:24]
    for name, chosen in (("top", list(order[:24])), ("above-threshold", just_above), ("below-threshold", just_below)):
        gallery(arguments.cache / f"cifar10-duplicates-{name}.png",
                [(pixels[test[t]], pixels[train[best.best[t]]],
                  f"{best.best_similarity[t]:.3f} {names[test[t]].split('/')[1][:5]}/"
                  f"{names[train[best.best[t]]].split('/')[1][:5]}") for t in chosen])
    gallery(RESULTS / "cifar10-duplicates.png",
            [(pixels[test[t]], pixels[train[best.best[t]]], f"{best.best_similarity[t]:.3f}")
             for t in list(order[:12]) + just_above[:12]])
    accuracies = probe_accuracies(feats, labels, test, train, twins.test_rows)
    result = {
        "backbone": BACKBONE.name, "input_size": arguments.input_size, "similarity_threshold": threshold,
        "similarity": "mean of the centred cosine similarities of the pooled features and 8x8 thumbnails",
        "images": len(names), "decode_seconds": round(decode_seconds, 1),
        "feature_seconds": round(feature_seconds, 1),
        "search_seconds_test_x_train": round(cross_seconds, 1),
        "search_seconds_train_x_train": round(within_train_seconds, 1),
        "train_test_duplicates": len(twins.test_rows),
        "train_test_duplicates_share": float(len(twins.test_rows) / len(test)),
        "train_test_exact": len(np.unique(twins.test[twins.exact])),
        "train_test_pairs": len(twins.test), "train_twins": len(twins.train_rows),
        "within_train": len(within_train), "within_test": len(within_test),
        "best_similarity_quantiles": quantiles, "test_images_with_best_similarity_at_least": above,
        "calibration": calibration, "accuracy": accuracies,
    }
    provenance.write(RESULTS / "cifar10-duplicates.json", result, run)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
