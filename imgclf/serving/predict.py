"""`imgclf predict`: classify image files with a trained model, a `.keras` file or an MLflow model URI.

Files are decoded exactly as the preprocess stage decoded the training images (`packaging.Classifier`) and go
through the model in batches. A file that cannot be read gets an error row (and a line on stderr) while the
others are still classified; the exit code says whether every file was classified (0) or not (1).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf import artifacts, fileio
from imgclf.errors import UserError
from imgclf.serving import serving
from imgclf.tracking import packaging

FORMATS = artifacts.PREDICTION_FORMATS
CHUNK = 256  # images decoded and held in memory at a time; the model sees them in batches of packaging.BATCH_SIZE
SCORE_BAR_CLASSES = 20  # beyond this many classes, a score-bar figure shows the top classes only
EXIT_OK, EXIT_SOME_FAILED, EXIT_SCORE_BARS_FAILED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One file's result: its top classes with probabilities, most probable first, or why it failed."""

    file: str
    top: tuple[tuple[str, float], ...] = ()
    error: str | None = None

    @property
    def predicted_class(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None


def image_suffixes() -> frozenset[str]:
    """File suffixes of every format Pillow can open (`.png`, `.jpg`, `.webp`, `.tif`, ...)."""
    Image.init()
    return frozenset(suffix.lower() for suffix, name in Image.registered_extensions().items() if name in Image.OPEN)


def find_images(paths: Sequence[Path]) -> list[Path]:
    """Files named on the command line as they are (so a bad one is reported), and the image files found
    under folders, recursively, sorted, hidden files and folders skipped."""
    suffixes = image_suffixes()
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        under = []
        for current, dirs, names in fileio.walk(path):  # bounded: a 2,100-level tree is one error line
            dirs[:] = [name for name in dirs if not name.startswith(".")]
            under += [Path(current, name) for name in names if not name.startswith(".")
                      and Path(name).suffix.lower() in suffixes and Path(current, name).is_file()]
        found += sorted(under)
    return found


def refuse_special_inputs(paths: Sequence[Path]) -> None:
    """Refuse a path named on the command line that is neither a file nor a folder, by its stat alone: opening a
    FIFO blocks until something writes to it, and a device (/dev/zero, /dev/stdin) never ends."""
    for path in paths:
        mode = os.stat(path).st_mode  # follows links: a link to a FIFO is a FIFO
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UserError(f"{path} is a FIFO, device or socket, not an image file or folder; give image files "
                            "or folders")


def top_classes(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> tuple[tuple[str, float], ...]:
    """The `k` most probable classes of one image, most probable first (ties: the lower class index first)."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return tuple((class_names[index], float(probabilities[index])) for index in order)


def classify(classifier: packaging.Classifier, files: Sequence[Path], *, top_k: int,
             chunk: int = CHUNK) -> Iterator[tuple[Prediction, np.ndarray | None, np.ndarray | None]]:
    """Per file, in order: its prediction and, when classified, its decoded pixels and all class
    probabilities. Files are decoded `chunk` at a time and each chunk goes through the model as one batch."""
    for start in range(0, len(files), chunk):
        decoded: list[tuple[Path, np.ndarray | None, str | None]] = []
        for path in files[start:start + chunk]:
            try:
                decoded.append((path, classifier.decode(path), None))
            except packaging.InvalidImageError as error:
                decoded.append((path, None, str(error)))
        good = [pixels for _, pixels, _ in decoded if pixels is not None]
        probabilities = iter(classifier.probabilities(np.stack(good)) if good else [])
        for path, pixels, error in decoded:
            if pixels is None:
                yield Prediction(str(path), error=error), None, None
            else:
                scores = next(probabilities)
                yield Prediction(str(path), top=top_classes(scores, classifier.class_names, top_k)), pixels, scores


def render(predictions: Sequence[Prediction], output_format: str, *, top_k: int) -> str:
    """The predictions as a table for people, JSON (a list of objects) or CSV (one row per file)."""
    if output_format == "json":
        return render_json(predictions)
    if output_format == "csv":
        return render_csv(predictions, top_k=top_k)
    return render_table(predictions)


def render_json(predictions: Iterable[Prediction]) -> str:
    rows = [{"file": p.file, "predicted_class": p.predicted_class, "probability": p.probability,
             "top_k": [{"class": name, "probability": value} for name, value in p.top], "error": p.error}
            for p in predictions]
    return json.dumps(rows, indent=2) + "\n"


def render_csv(predictions: Iterable[Prediction], *, top_k: int) -> str:
    """`file, predicted_class, probability, class_1, probability_1, ..., class_k, probability_k, error`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    ranks = [column for rank in range(1, top_k + 1) for column in (f"class_{rank}", f"probability_{rank}")]
    writer.writerow(["file", "predicted_class", "probability", *ranks, "error"])
    for p in predictions:
        cells = [value for pair in p.top for value in pair]
        writer.writerow([p.file, p.predicted_class or "", "" if p.probability is None else p.probability,
                         *cells, *[""] * (len(ranks) - len(cells)), p.error or ""])
    return buffer.getvalue()


def render_table(predictions: Sequence[Prediction]) -> str:
    """Aligned columns: file, predicted class, probability, then the top classes (or the error)."""
    rows = [("file", "prediction", "prob", "top classes")]
    for p in predictions:
        if p.error:
            rows.append((p.file, "ERROR", "", p.error))
        else:
            rows.append((p.file, p.predicted_class, f"{p.probability:.3f}",
                         ", ".join(f"{name} {value:.3f}" for name, value in p.top)))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3]]).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"


def score_bar_name(position: int, file: str) -> str:
    """`0003-cat.png`: the file's position in the output (unique) and its readable stem."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file).stem)[:60] or "image"
    return f"{position:04d}-{stem}.png"


def write_score_bars(path: Path, *, pixels: np.ndarray, scores: np.ndarray, prediction: Prediction,
                     class_names: Sequence[str], model_label: str) -> None:
    """One figure: the image as the model saw it and its score per class (the top classes beyond
    SCORE_BAR_CLASSES classes)."""
    from imgclf import figures

    if len(class_names) <= SCORE_BAR_CLASSES:
        shown = list(range(len(class_names)))
    else:
        shown = list(np.argsort(-scores, kind="stable")[:SCORE_BAR_CLASSES])
    name = figures.shorten(Path(prediction.file).name, 40)
    title = f"{name}\n{prediction.predicted_class} ({prediction.probability:.2f})"
    item = {"image": pixels, "title": title, "classes": [class_names[i] for i in shown], "true_class": None,
            "scores": {model_label: [float(scores[i]) for i in shown]}}
    figures.score_bars([item], path, models=[model_label])


def run(paths: Sequence[Path], *, model: str, meta: Path, top_k: int, output_format: str, output: Path | None,
        score_bars: Path | None, project_root: Path) -> int:
    """The `imgclf predict` command; returns the exit code. Raises `errors.UserError` for a usage error."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    # Checked before any work, so a mistyped option never costs a long run.
    if output is not None and Path(output).is_dir():
        raise UserError(f"--output {output} is a directory; give a file name, e.g. {Path(output) / 'predictions.csv'}")
    if output is not None:
        fileio.refuse_special_target(Path(output))  # a device node would be replaced by the results file
        fileio.check_writable_folder(Path(output).parent, option=f"--output {output}")  # else the predictions are lost
    if score_bars is not None and Path(score_bars).exists() and not Path(score_bars).is_dir():
        raise UserError(f"--score-bars {score_bars} exists and is not a folder; give a folder for the PNGs")
    if score_bars is not None:
        fileio.check_writable_folder(Path(score_bars), option=f"--score-bars {score_bars}")
    missing = [str(path) for path in paths if not Path(path).exists()]
    if missing:  # a mistyped path; a file that exists but cannot be decoded gets its error row instead
        raise UserError(f"{', '.join(missing)}: no such file or folder; check the path"
                        + ("s" if len(missing) > 1 else ""))
    refuse_special_inputs(paths)
    files = find_images(paths)
    if not files:
        raise UserError(f"no image files in {', '.join(map(str, paths))}; give image files or "
                        "folders that contain some")
    classifier = serving.load_classifier(model, meta=meta, project_root=project_root)
    top_k = min(top_k, len(classifier.class_names))
    # The legend of score bars: the URI, or the model file with its folder (scratch/model.keras).
    model_label = model if serving.is_model_uri(model) else str(Path(Path(model).parent.name) / Path(model).name)
    predictions = []
    score_bar_error = None
    for position, (prediction, pixels, scores) in enumerate(classify(classifier, files, top_k=top_k)):
        predictions.append(prediction)
        if prediction.error:
            print(f"error: {prediction.file}: {prediction.error}", file=sys.stderr)
        elif score_bars is not None and score_bar_error is None:
            try:
                write_score_bars(Path(score_bars) / score_bar_name(position, prediction.file), pixels=pixels,
                                 scores=scores, prediction=prediction, class_names=classifier.class_names,
                                 model_label=model_label)
            except OSError as error:  # a full disk or a read-only folder: the predictions still come out
                score_bar_error = error
    text = render(predictions, output_format, top_k=top_k)
    if output is None:
        sys.stdout.write(text)
    else:
        fileio.atomic_write_text(Path(output), text)
    failed = sum(1 for prediction in predictions if prediction.error)
    print(f"classified {len(predictions) - failed} of {len(predictions)} files"
          + (f"; {failed} could not be read" if failed else ""), file=sys.stderr)
    if score_bar_error is not None:
        print(f"error: score bars stopped ({score_bar_error}); the predictions above are complete",
              file=sys.stderr)
        return EXIT_SCORE_BARS_FAILED
    return EXIT_SOME_FAILED if failed else EXIT_OK
