"""Twins across the split: test images whose copy (exact or edited) sits in the training set.

Pure numpy, no TensorFlow: the `find_duplicates` stage (imgclf/data/find_duplicates.py) feeds it the prepared
pixels and the backbone features the extract_features stage cached, and bench/duplicates.py the same functions
on the raw CIFAR-10 archive.

- Exact duplicates: equal digests of the decoded pixels (a re-saved or renamed copy).
- Near duplicates (resized, re-encoded, slightly cropped or shifted, colour tweaked): the mean of two cosine
  similarities, each centred on the training mean: of the pooled backbone features, and of 8x8 colour
  thumbnails (a perceptual hash in vector form). Neither alone separates copies from look-alikes on CIFAR-10
  (bench/duplicates.py): a JPEG re-encode at quality 50 of a 32-px photo moves its backbone features as far as a
  different photo of the same kind of scene, while its thumbnail hardly moves; a 2-pixel shift moves the
  thumbnail more than the features; and two different photos of blue sky share a thumbnail but not features.
  A copy scores high on both, a look-alike on one. Uncentred, pooled activations of any two photos point the same
  way (all positive after the last ReLU), which squeezes unrelated pairs up towards the copies.
- Scale: every test row against every training row as blocked matrix products, keeping per block each row's
  best match and its (at most MAX_TWINS) matches at or above the threshold. CIFAR-10's 10,000 x 50,000 pairs
  take seconds; memory stays at one block of `block_rows` x references similarities.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

# Rows of queries per matrix product: 512 x 50,000 float32 similarities is 100 MB.
BLOCK_ROWS = 512
# Twins kept per query image, the most similar first: a threshold low enough to pair an image with dozens of others
# finds look-alikes, not copies, and must not grow the pair list (and the exclusions) towards queries x references.
MAX_TWINS = 10


def pixel_digest(pixels: bytes | np.ndarray) -> str:
    """A short digest of decoded pixels: equal for identical images, whatever their file names or encodings."""
    data = pixels.tobytes() if isinstance(pixels, np.ndarray) else pixels
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pixel_digests(images: Iterable[bytes | np.ndarray]) -> list[str]:
    return [pixel_digest(image) for image in images]


def unit_rows(features: np.ndarray, *, centre: np.ndarray | None = None) -> np.ndarray:
    """float32 rows of length one (after subtracting `centre`); an all-zero row stays zero (similar to nothing)."""
    rows = np.asarray(features, dtype=np.float32)
    if centre is not None:
        rows = rows - np.asarray(centre, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


THUMBNAIL_SIDE = 8  # 8x8 colour thumbnails: JPEG blocks and pixel noise average out, the layout of a photo stays


def thumbnail(pixels: np.ndarray, *, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A uint8 image's side x side box-filtered thumbnail, flattened to float32."""
    image = np.asarray(pixels, dtype=np.uint8)
    picture = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    return np.asarray(picture.resize((side, side), Image.Resampling.BOX), dtype=np.float32).reshape(-1)


def thumbnails(images: Iterable[np.ndarray], *, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    return np.stack([thumbnail(image, side=side) for image in images])


def describe(views: Sequence[np.ndarray], centres: Sequence[np.ndarray | None]) -> np.ndarray:
    """One row per image from several views of it (backbone features, thumbnails): each view centred and scaled
    to length one, side by side, so that the dot product of two rows is the mean of the views' cosine
    similarities."""
    return np.concatenate([unit_rows(view, centre=centre) for view, centre in zip(views, centres, strict=True)],
                          axis=1) / np.float32(np.sqrt(len(views)))


@dataclasses.dataclass(frozen=True)
class Matches:
    """Per query row: its most similar reference row and that similarity; and the (query, reference) pairs at or
    above the threshold, at most `twins` per query, most similar first within each query."""

    best: np.ndarray  # int64 reference row per query (-1: no reference)
    best_similarity: np.ndarray  # float32
    pairs: np.ndarray  # (n, 2) int64: query row, reference row
    pair_similarity: np.ndarray  # float32
    capped: int = 0  # queries with more than `twins` references at or above the threshold


def search(queries: np.ndarray, references: np.ndarray, *, threshold: float, same_set: bool = False,
           twins: int = MAX_TWINS, block_rows: int = BLOCK_ROWS) -> Matches:
    """Cosine nearest neighbours of unit-length `queries` among unit-length `references` (unit_rows), by blocked
    matrix products. `same_set`: queries and references are the same rows, and a row never matches itself.
    `twins=0` keeps only each query's best match (no pair list)."""
    count = len(queries)
    best = np.full(count, -1, dtype=np.int64)
    best_similarity = np.full(count, -np.inf, dtype=np.float32)
    found_pairs, found_similarity, capped = [], [], 0
    keep = min(twins, len(references))
    for start in range(0, count if len(references) else 0, block_rows):
        similarity = queries[start:start + block_rows] @ references.T
        rows = np.arange(len(similarity))
        if same_set:
            similarity[rows, start + rows] = -np.inf
        block = slice(start, start + len(rows))
        best[block] = np.argmax(similarity, axis=1)
        best_similarity[block] = similarity[rows, best[block]]
        if not keep:
            continue
        over = similarity >= threshold
        capped += int(np.sum(over.sum(axis=1) > keep))
        # the `keep` most similar references of each row (in no order), then those at or above the threshold
        top = np.argpartition(-similarity, keep - 1, axis=1)[:, :keep] if keep < len(references) else \
            np.broadcast_to(np.arange(len(references)), similarity.shape)
        chosen = over[rows[:, None], top]
        query, reference = np.broadcast_to(rows[:, None], top.shape)[chosen], top[chosen]
        found_pairs.append(np.stack([query + start, reference], axis=1))
        found_similarity.append(similarity[query, reference])
    pairs = np.concatenate(found_pairs).astype(np.int64) if found_pairs else np.zeros((0, 2), np.int64)
    pair_similarity = np.concatenate(found_similarity) if found_similarity else np.zeros(0, np.float32)
    order = np.lexsort((pairs[:, 1], -pair_similarity, pairs[:, 0]))
    return Matches(best, best_similarity, pairs[order], pair_similarity[order].astype(np.float32), capped)


@dataclasses.dataclass(frozen=True)
class Twins:
    """Test images with a training twin: each (test row, training row) pair, its similarity and whether the
    pixels are identical; `rows` lists every twin of a test image, its best first."""

    test: np.ndarray
    train: np.ndarray
    similarity: np.ndarray
    exact: np.ndarray
    capped: int = 0  # test images with more than MAX_TWINS training twins: only the most similar are listed

    @property
    def test_rows(self) -> np.ndarray:
        """The test rows that have at least one twin in training."""
        return np.unique(self.test)

    @property
    def train_rows(self) -> np.ndarray:
        """The training rows that are a twin of some test image."""
        return np.unique(self.train)


def cross_twins(test_views: Sequence[np.ndarray], train_views: Sequence[np.ndarray], *, test_digests: list[str],
                train_digests: list[str], threshold: float, block_rows: int = BLOCK_ROWS) -> Twins:
    """Every (test, training) pair that is a copy: identical pixels, or views (backbone features, thumbnails)
    whose centred cosine similarities average at least `threshold`."""
    centres = [view.mean(axis=0) if len(view) else None for view in train_views]
    matches = search(describe(test_views, centres), describe(train_views, centres), threshold=threshold,
                     block_rows=block_rows)
    pairs = {(int(test), int(train)): float(value) for (test, train), value in
             zip(matches.pairs, matches.pair_similarity, strict=True)}
    by_digest: dict[str, list[int]] = {}
    for row, digest in enumerate(train_digests):
        by_digest.setdefault(digest, []).append(row)
    exact = set()
    for test, digest in enumerate(test_digests):
        for train in by_digest.get(digest, ()):
            pairs[(test, train)] = 1.0  # identical pixels, whatever float rounding says
            exact.add((test, train))
    keys = sorted(pairs, key=lambda key: (key[0], -pairs[key], key[1]))
    return Twins(test=np.array([key[0] for key in keys], dtype=np.int64),
                 train=np.array([key[1] for key in keys], dtype=np.int64),
                 similarity=np.array([pairs[key] for key in keys], dtype=np.float32),
                 exact=np.array([key in exact for key in keys], dtype=bool), capped=matches.capped)


def images_with_twin_within(views: Sequence[np.ndarray], *, digests: list[str], threshold: float,
                            centres: Sequence[np.ndarray] | None = None,
                            block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """The rows of one split that have a copy elsewhere in the same split (both of a pair are counted: a row's
    best match is at least as similar to it as it is to that match)."""
    if len(views[0]) < 2:
        return np.zeros(0, dtype=np.int64)
    rows = describe(views, [view.mean(axis=0) for view in views] if centres is None else centres)
    matches = search(rows, rows, threshold=threshold, same_set=True, twins=0, block_rows=block_rows)
    found = set(np.flatnonzero(matches.best_similarity >= threshold).tolist())
    groups: dict[str, list[int]] = {}
    for row, digest in enumerate(digests):
        groups.setdefault(digest, []).append(row)
    found |= {row for group in groups.values() if len(group) > 1 for row in group}
    return np.array(sorted(found), dtype=np.int64)
