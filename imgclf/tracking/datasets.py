"""The prepared data as an MLflow dataset input: one digest of its content, however `data.path` was spelled."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource

from imgclf import artifacts, fileio
from imgclf.config import Params, whole

log = logging.getLogger(__name__)

PREPARED_DIGEST_TAG = "data.prepared_digest"  # tracking.prepared_digest: the same images, the same digest


class PreparedDataset(MetaDataset):
    """The prepared data as an MLflow dataset input: a reference (name, DVC digest, location) with the split
    sizes as its profile, not a copy of the images."""

    def __init__(self, *, source: LocalArtifactDatasetSource, name: str, digest: str | None,
                 split_sizes: dict[str, int]):
        self._split_sizes = dict(split_sizes)
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return dict(self._split_sizes)

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def prepared_dataset(project_root: Path, *, name: str) -> PreparedDataset | None:
    """The prepared data of `project_root` (its meta.json split counts, `prepared_digest` as digest); None before
    the preprocess stage ran."""
    folder = Path(project_root).resolve() / artifacts.PREPARED_DIR
    if not (folder / artifacts.META_FILE).is_file():
        return None
    counts = artifacts.read_prepared_meta(folder).counts
    return PreparedDataset(source=LocalArtifactDatasetSource(folder.as_uri()), name=name,
                           digest=prepared_digest(project_root),
                           split_sizes={f"{split}_images": int(count) for split, count in counts.items()})


def log_prepared_data(params: Params, *, project_root: Path, context: str) -> None:
    """Log the prepared data as the active run's dataset input (`training` or `evaluation`), so the runs table's
    Dataset column says which data a run saw."""
    dataset = prepared_dataset(project_root, name=f"{whole(params).data.source}-prepared")
    if dataset is None:
        log.warning("no %s/%s: the run has no dataset input (run the preprocess stage)", artifacts.PREPARED_DIR,
                    artifacts.META_FILE)
        return
    mlflow.log_input(dataset, context=context, tags={key: str(value) for key, value in dataset.profile.items()})


def prepared_digest(project_root: Path) -> str | None:
    """The content digest of the prepared data: its classes, image size and the bytes of every TFRecord shard (the
    images, labels and ids a model sees), so the same photos have one digest in MLflow however data.path was
    spelled, wherever the project lies. None before the preprocess stage ran."""
    folder = Path(project_root).resolve() / artifacts.PREPARED_DIR
    if not (folder / artifacts.META_FILE).is_file():
        return None
    return _prepared_digest(str(folder), (folder / artifacts.META_FILE).stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _prepared_digest(folder: str, _meta_mtime_ns: int) -> str:
    meta = artifacts.read_prepared_meta(Path(folder))
    digest = hashlib.sha256(json.dumps(
        {"class_names": list(meta.class_names), "image_shape": list(meta.image_shape), "resize": meta.resize},
        sort_keys=True).encode())
    for split in sorted(meta.shards):
        for shard in meta.shards[split]:
            digest.update(f"{split}/{shard}:{fileio.sha256_file(Path(folder) / shard)}\n".encode())
    return digest.hexdigest()[:32]
