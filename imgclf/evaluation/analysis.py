"""Error analysis: which model is right on each test image, is the difference real, and where each one fails.

Reads both models' test predictions (evaluate stage), writes to the analysis directory:
- `summary.json` (DVC metrics): the 2x2 table, both accuracies, the difference with its bootstrap interval
  and McNemar's p-value;
- `per_image.csv`: one row per test image with both models' predictions, losses and margins;
- galleries as PNG: `both_wrong`, `only_transfer_right`, `only_scratch_right`, `<model>_top_losses`,
  `<model>_most_uncertain`, `<model>_most_confused` (with `most_confused.csv`), `label_errors` (with
  `label_errors.csv`; no PNG when there are none), `score_bars`, and `training_curves.png`;
- `report.html` (self-contained) and `summary.md` (short, for CI comments); both go to MLflow;
- with the find_duplicates stage's pairs: `duplicates.csv`, and in `summary.json` the comparison without the test
  images that have a training twin (imgclf/evaluation/deduplicated.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from imgclf import artifacts, figures, fileio, progress
from imgclf.artifacts import (
    DETAILS_FILE,
    MARKDOWN_FILE,
    MODEL_NAMES,
    RELIABILITY_FILE,
    REPORT_FILE,
    RUNS_FILE,
    PreparedMeta,
    confusion_plot,
    predictions_file,
    probabilities_file,
)
from imgclf.config import AnalysisConfig, Params
from imgclf.data import records
from imgclf.errors import EvaluationError
from imgclf.evaluation import deduplicated, paired_tests, report
from imgclf.tracking import store

log = logging.getLogger(__name__)

MODELS = MODEL_NAMES
SHORT = {"scratch": "S", "transfer": "T"}
OUTCOMES = ("both_right", "only_scratch_right", "only_transfer_right", "both_wrong")


@dataclasses.dataclass(frozen=True)
class ModelPredictions:
    """One model's test predictions as the evaluate stage wrote them."""

    ids: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    originals: dict[int, str]


def load_predictions(evaluate_dir: Path, model: str, *, num_classes: int) -> ModelPredictions:
    """Read `<model>_probabilities.npz` and `<model>_predictions.csv`; refuse missing or mismatched files."""
    evaluate_dir = Path(evaluate_dir)
    table_path = evaluate_dir / predictions_file(model)
    scores_path = evaluate_dir / probabilities_file(model)
    for path in (table_path, scores_path):
        if not path.is_file():
            raise EvaluationError(f"{path} not found: the analysis needs both models' test predictions; run the "
                                  "evaluate stage first (dvc repro evaluate)")
    with np.load(scores_path) as scores:
        ids, labels, probabilities = scores["ids"], scores["labels"], scores["probabilities"]
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes or len(ids) != len(probabilities):
        raise EvaluationError(f"{scores_path} holds scores for {probabilities.shape[-1]} classes but the prepared "
                              f"data has {num_classes}: the predictions come from another data set; rerun the "
                              "evaluate stage (dvc repro evaluate)")
    table = pd.read_csv(table_path, dtype={"original": str}, keep_default_na=False)
    originals = dict(zip(table["id"].astype(int), table["original"], strict=True)) if "original" in table else {}
    return ModelPredictions(ids=ids.astype(np.int64), labels=labels.astype(np.int64),
                            probabilities=probabilities.astype(np.float64), originals=originals)


def _model_columns(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    rows = np.arange(len(labels))
    top_two = -np.sort(-probabilities, axis=1)[:, :2]
    true_probability = probabilities[rows, labels]
    return {
        "predicted_label": probabilities.argmax(axis=1),
        "probability": top_two[:, 0],
        "true_probability": true_probability,
        "loss": -np.log(np.clip(true_probability, 1e-12, 1.0)),
        "margin": top_two[:, 0] - (top_two[:, 1] if probabilities.shape[1] > 1 else 0.0),
    }


def per_image_table(scratch: ModelPredictions, transfer: ModelPredictions, *, class_names: list[str]) -> pd.DataFrame:
    """One row per test image: both models' predictions, losses, margins and the 2x2 outcome."""
    if len(scratch.ids) != len(transfer.ids) or set(scratch.ids.tolist()) != set(transfer.ids.tolist()):
        raise EvaluationError("the two models' prediction files cover different test images; rerun the evaluate "
                              "stage (dvc repro evaluate)")
    order = pd.Series(np.arange(len(transfer.ids)), index=transfer.ids)[scratch.ids].to_numpy()
    if not np.array_equal(scratch.labels, transfer.labels[order]):
        raise EvaluationError("the two models' prediction files disagree on the true labels; rerun the evaluate "
                              "stage (dvc repro evaluate)")
    names = np.asarray(class_names, dtype=object)
    table = pd.DataFrame({"id": scratch.ids, "original": [scratch.originals.get(int(i), "") for i in scratch.ids],
                          "true_label": scratch.labels, "true_class": names[scratch.labels]})
    for model, probabilities in (("scratch", scratch.probabilities), ("transfer", transfer.probabilities[order])):
        for column, values in _model_columns(probabilities, scratch.labels).items():
            table[f"{column}_{model}"] = values
        table[f"predicted_class_{model}"] = names[table[f"predicted_label_{model}"]]
        table[f"right_{model}"] = table[f"predicted_label_{model}"] == table["true_label"]
    scratch_right, transfer_right = table["right_scratch"], table["right_transfer"]
    table["outcome"] = np.select(
        [scratch_right & transfer_right, scratch_right & ~transfer_right, ~scratch_right & transfer_right],
        OUTCOMES[:3], default=OUTCOMES[3])
    return table


def outcome_gallery(table: pd.DataFrame, *, outcome: str, size: int) -> pd.DataFrame:
    """Images with this outcome, the most striking first: the wrong model(s) most confident."""
    chosen = table[table["outcome"] == outcome]
    wrong = [model for model in MODELS if outcome in ("both_wrong", f"only_{_other(model)}_right")]
    confidence = chosen[[f"probability_{model}" for model in wrong]].max(axis=1) if wrong else chosen["id"] * 0
    return chosen.assign(_key=confidence).sort_values(["_key", "id"], ascending=[False, True]).head(size)


def _other(model: str) -> str:
    return MODELS[1 - MODELS.index(model)]


def top_losses(table: pd.DataFrame, *, model: str, size: int) -> pd.DataFrame:
    """The model's most confidently wrong images: highest cross-entropy loss among its mistakes."""
    wrong = table[~table[f"right_{model}"]]
    return wrong.sort_values([f"loss_{model}", "id"], ascending=[False, True]).head(size)


def most_uncertain(table: pd.DataFrame, *, model: str, size: int) -> pd.DataFrame:
    """The images where the model's top two classes are closest (smallest top-1 minus top-2 margin)."""
    return table.sort_values([f"margin_{model}", "id"]).head(size)


def most_confused(table: pd.DataFrame, *, model: str, pairs: int) -> pd.DataFrame:
    """The (true, predicted) class pairs the model confuses most often, like fastai's `most_confused`:
    columns true_class, predicted_class, count and share (of the true class's test images)."""
    wrong = table[~table[f"right_{model}"]]
    if wrong.empty:
        return pd.DataFrame({"true_class": pd.Series(dtype=str), "predicted_class": pd.Series(dtype=str),
                             "count": pd.Series(dtype=int), "share": pd.Series(dtype=float)})
    counts = (wrong.groupby(["true_class", f"predicted_class_{model}"]).size()
              .rename("count").reset_index().rename(columns={f"predicted_class_{model}": "predicted_class"}))
    support = table["true_class"].value_counts()
    counts["share"] = counts["count"] / counts["true_class"].map(support)
    return counts.sort_values(["count", "true_class", "predicted_class"], ascending=[False, True, True]).head(pairs)


def confused_examples(table: pd.DataFrame, *, model: str, true_class: str, predicted_class: str,
                      size: int) -> pd.DataFrame:
    """Images of one confused pair, the most confidently wrong first."""
    chosen = table[(table["true_class"] == true_class) & (table[f"predicted_class_{model}"] == predicted_class)]
    return chosen.sort_values([f"probability_{model}", "id"], ascending=[False, True]).head(size)


def label_error_candidates(table: pd.DataFrame, *, confidence: float, size: int | None = None) -> pd.DataFrame:
    """Possible label errors: both models predict the same class, not the label, each with at least
    `confidence`; the surest first."""
    agree = table["predicted_label_scratch"] == table["predicted_label_transfer"]
    sure = (table["probability_scratch"] >= confidence) & (table["probability_transfer"] >= confidence)
    chosen = table[agree & sure & ~table["right_scratch"]]
    key = chosen[["probability_scratch", "probability_transfer"]].min(axis=1)
    chosen = chosen.assign(_key=key).sort_values(["_key", "id"], ascending=[False, True]).drop(columns="_key")
    return chosen if size is None else chosen.head(size)


def score_bar_selection(table: pd.DataFrame, *, ids: list[int], count: int) -> pd.DataFrame:
    """The images to draw class-score bars for: `ids` if given (all must be test images), else `count`
    images where the models disagree (highest loss of either first), topped up with the most uncertain."""
    if ids:
        known = set(table["id"].astype(int))
        unknown = [image_id for image_id in ids if image_id not in known]
        if unknown:
            raise EvaluationError(f"analysis.score_bar_ids: {unknown[:10]} are not test images; pick ids from the "
                                  "`id` column of results/analysis/per_image.csv")
        return table.set_index("id", drop=False).loc[ids].reset_index(drop=True)
    disagree = table[table["predicted_label_scratch"] != table["predicted_label_transfer"]]
    key = disagree[["loss_scratch", "loss_transfer"]].max(axis=1)
    chosen = disagree.assign(_key=key).sort_values(["_key", "id"], ascending=[False, True]).head(count)
    if len(chosen) < count:
        rest = table[~table["id"].isin(chosen["id"])]
        margin = rest[["margin_scratch", "margin_transfer"]].min(axis=1)
        extra = rest.assign(_key=margin).sort_values(["_key", "id"]).head(count - len(chosen))
        chosen = pd.concat([chosen, extra])
    return chosen.drop(columns="_key")


def shown_classes(scores: dict[str, np.ndarray], *, true_label: int, limit: int) -> list[int]:
    """Every class when there are at most `limit`, else the top classes of either model plus the true class,
    ordered by the higher of the two scores."""
    num_classes = len(next(iter(scores.values())))
    best = np.max(np.stack(list(scores.values())), axis=0)
    if num_classes <= limit:
        return list(range(num_classes))
    order = [int(index) for index in np.argsort(-best, kind="stable")[:limit]]
    if true_label not in order:
        order[-1] = true_label
    return sorted(order, key=lambda index: (-best[index], index))


def split_pixels(prepared_dir: Path, ids: set[int], meta: PreparedMeta) -> dict[int, np.ndarray]:
    """The uint8 pixels of the requested test images, read from the shards in one streaming pass (without
    TensorFlow: this stage would otherwise import it for a few dozen images)."""
    return records.read_images(records.split_files(prepared_dir, "test"), ids, meta.image_shape)


def read_history(path: Path) -> pd.DataFrame:
    """A training stage's per-epoch history (empty, with a warning, when absent: the report says so)."""
    path = Path(path)
    if not path.is_file():
        log.warning("%s not found: the report shows no training curves for it", path)
        return pd.DataFrame()
    return pd.DataFrame(artifacts.read_history(path))


def training_summary(history: pd.DataFrame) -> dict:
    """Epochs and training seconds from a history table (the columns that exist)."""
    if history.empty:
        return {}
    summary = {"epochs": len(history)}
    if "epoch_seconds" in history:
        summary["training_seconds"] = float(history["epoch_seconds"].sum())
    if "val_accuracy" in history:
        summary["best_val_accuracy"] = float(history["val_accuracy"].max())
    if "phase" in history:
        phases = history["phase"].value_counts(sort=False)
        summary["phases"] = {str(phase): int(count) for phase, count in phases.items()}
    return summary


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _caption(row) -> str:
    lines = [f"true: {figures.shorten(row.true_class, 18)}"]
    for model in MODELS:
        mark = "ok" if getattr(row, f"right_{model}") else "x"
        lines.append(f"{SHORT[model]}: {figures.shorten(getattr(row, f'predicted_class_{model}'), 14)} "
                     f"{getattr(row, f'probability_{model}'):.2f} {mark}")
    return "\n".join(lines)


def _tiles(rows: pd.DataFrame, pixels: dict[int, np.ndarray]) -> list[report.Tile]:
    return [report.Tile(
        image_id=int(row.id), image=pixels[int(row.id)], true_class=str(row.true_class), original=str(row.original),
        predictions={model: report.Guess(str(getattr(row, f"predicted_class_{model}")),
                                         float(getattr(row, f"probability_{model}")),
                                         bool(getattr(row, f"right_{model}"))) for model in MODELS})
        for row in rows.itertuples()]


@dataclasses.dataclass(frozen=True)
class Selections:
    """Which test images each gallery shows (rows of the per-image table)."""

    outcomes: dict[str, pd.DataFrame]
    top_losses: dict[str, pd.DataFrame]
    most_uncertain: dict[str, pd.DataFrame]
    confused_pairs: dict[str, pd.DataFrame]
    confused_examples: dict[str, list[pd.DataFrame]]
    label_errors: pd.DataFrame
    label_error_count: int
    score_bars: pd.DataFrame

    def ids(self) -> set[int]:
        frames = [*self.outcomes.values(), *self.top_losses.values(), *self.most_uncertain.values(),
                  *(frame for frames in self.confused_examples.values() for frame in frames), self.label_errors,
                  self.score_bars]
        return {int(image_id) for frame in frames for image_id in frame["id"]}


def select(table: pd.DataFrame, *, settings: AnalysisConfig) -> Selections:
    """Every gallery's images, from the per-image table and the analysis params."""
    size, per_pair = settings.gallery_size, settings.confused_examples
    pairs = {model: most_confused(table, model=model, pairs=settings.confused_pairs) for model in MODELS}
    label_errors = label_error_candidates(table, confidence=settings.label_error_confidence)
    return Selections(
        outcomes={outcome: outcome_gallery(table, outcome=outcome, size=size)
                  for outcome in ("both_wrong", "only_transfer_right", "only_scratch_right")},
        top_losses={model: top_losses(table, model=model, size=size) for model in MODELS},
        most_uncertain={model: most_uncertain(table, model=model, size=size) for model in MODELS},
        confused_pairs=pairs,
        confused_examples={model: [confused_examples(table, model=model, true_class=pair.true_class,
                                                     predicted_class=pair.predicted_class,
                                                     size=per_pair)
                                   for pair in pairs[model].itertuples()] for model in MODELS},
        label_errors=label_errors.head(size), label_error_count=len(label_errors),
        score_bars=score_bar_selection(table, ids=settings.score_bar_ids, count=settings.score_bar_images))


_OUTCOME_TEXT = {
    "both_wrong": ("Both models wrong", "Test images neither model gets right, the most confident mistakes first."),
    "only_transfer_right": ("Only transfer right", "Images the transfer model gets right and the scratch model "
                            "gets wrong, the scratch model's most confident mistakes first."),
    "only_scratch_right": ("Only scratch right", "Images the scratch model gets right and the transfer model "
                           "gets wrong, the transfer model's most confident mistakes first."),
}


def galleries(table: pd.DataFrame, selections: Selections, pixels: dict[int, np.ndarray], *,
              label_error_confidence: float) -> list[report.Gallery]:
    """The report's galleries, in reading order."""
    result = []
    counts = table["outcome"].value_counts()
    for outcome, (title, description) in _OUTCOME_TEXT.items():
        result.append(report.Gallery(anchor=outcome.replace("_", "-"), title=title, description=description,
                                     groups=[("", _tiles(selections.outcomes[outcome], pixels))],
                                     total=int(counts.get(outcome, 0))))
    result.append(report.Gallery(
        anchor="top-losses", title="Top losses", description="Each model's most confidently wrong images "
        "(highest cross-entropy loss among its mistakes).", total=None,
        groups=[(f"{model}: {int((~table[f'right_{model}']).sum())} mistakes",
                 _tiles(selections.top_losses[model], pixels)) for model in MODELS]))
    result.append(report.Gallery(
        anchor="most-uncertain", title="Most uncertain", description="Images where each model's top two "
        "classes are closest (smallest margin between the top-1 and top-2 probability).", total=None,
        groups=[(model, _tiles(selections.most_uncertain[model], pixels)) for model in MODELS]))
    groups = []
    for model in MODELS:
        for pair, examples in zip(selections.confused_pairs[model].itertuples(), selections.confused_examples[model],
                                  strict=True):
            groups.append((f"{model}: {pair.true_class} → {pair.predicted_class}: {_images(pair.count)} "
                           f"({100 * pair.share:.0f}% of {pair.true_class})", _tiles(examples, pixels)))
        if selections.confused_pairs[model].empty:
            groups.append((f"{model}: no mistakes", []))
    result.append(report.Gallery(
        anchor="most-confused", title="Most confused class pairs", description="The (true → predicted) pairs "
        "each model gets wrong most often, with the most confident examples.", total=None, groups=groups,
        rows=True))
    result.append(report.Gallery(
        anchor="label-errors", title="Possible label errors", description="Both models agree with each other, "
        "confidently, and disagree with the label: check these labels first.",
        groups=[("", _tiles(selections.label_errors, pixels))], total=selections.label_error_count,
        empty=f"None: on no test image do both models give the same other class a probability of at least "
              f"{label_error_confidence:g} (analysis.label_error_confidence)."))
    return result


def score_bar_items(table: pd.DataFrame, selections: Selections, pixels: dict[int, np.ndarray], *,
                    scores: dict[str, dict[int, np.ndarray]], class_names: list[str],
                    limit: int) -> list[report.ScoreBars]:
    items = []
    for tile, row in zip(_tiles(selections.score_bars, pixels), selections.score_bars.itertuples(), strict=True):
        by_model = {model: scores[model][int(row.id)] for model in MODELS}
        shown = shown_classes(by_model, true_label=int(row.true_label), limit=limit)
        items.append(report.ScoreBars(tile=tile, classes=[class_names[index] for index in shown],
                                      scores={model: [float(by_model[model][index]) for index in shown]
                                              for model in MODELS}))
    return items


def gallery_figures(out_dir: Path, table: pd.DataFrame, selections: Selections,
                    pixels: dict[int, np.ndarray], score_items: list[report.ScoreBars]) -> list[Callable[[], None]]:
    """The galleries as PNG files (for browsing results/ and for MLflow): one call per file, not yet drawn, so the
    caller can count them as they are (each takes about a second)."""
    counts = table["outcome"].value_counts()

    def grid(rows: pd.DataFrame, name: str, title: str) -> Callable[[], None]:
        return functools.partial(figures.image_grid, [pixels[int(image_id)] for image_id in rows["id"]],
                                 [_caption(row) for row in rows.itertuples()], out_dir / f"{name}.png", title=title)

    drawings = [grid(selections.outcomes[outcome], outcome,
                    f"{title}: {int(counts.get(outcome, 0))} of {len(table)} test images")
               for outcome, (title, _) in _OUTCOME_TEXT.items()]
    for model in MODELS:
        drawings.append(grid(selections.top_losses[model], f"{model}_top_losses",
                            f"{model}: top losses (most confidently wrong)"))
        drawings.append(grid(selections.most_uncertain[model], f"{model}_most_uncertain",
                            f"{model}: most uncertain (smallest margin)"))
        rows = [(f"{pair.true_class} →\n{pair.predicted_class}\n{_images(pair.count)}",
                 [pixels[int(image_id)] for image_id in examples["id"]],
                 [_caption(row) for row in examples.itertuples()])
                for pair, examples in zip(selections.confused_pairs[model].itertuples(),
                                          selections.confused_examples[model], strict=True)]
        drawings.append(functools.partial(
            figures.image_rows, rows, out_dir / artifacts.most_confused_plot(model),
            title=f"{model}: most confused class pairs",
            columns=max(1, max((len(images) for _, images, _ in rows), default=1))))
    if selections.label_error_count:  # none: the report says so in a sentence, and label_errors.csv is empty
        drawings.append(grid(selections.label_errors, "label_errors", f"Possible label errors: "
                            f"{selections.label_error_count} (both models agree, confidently, against the label)"))
    drawings.append(functools.partial(
        figures.score_bars, [{"image": item.tile.image, "title": f"#{item.tile.image_id} true: {item.tile.true_class}",
                            "classes": item.classes, "true_class": item.tile.true_class, "scores": item.scores}
                           for item in score_items], out_dir / artifacts.SCORE_BARS_PLOT, models=MODELS))
    return drawings


def run(params: Params, *, prepared_dir: Path, evaluate_dir: Path, history_paths: dict[str, Path], out_dir: Path,
        project_root: Path, duplicates_dir: Path | None = None) -> dict:
    """The error-analysis stage. Every file goes to a staging directory that replaces out_dir at the end, so a
    failed or killed run leaves the previous analysis whole, never a mix of two runs."""
    with fileio.staged_directory(out_dir) as staging:
        summary = _analyse(params, prepared_dir=prepared_dir, evaluate_dir=evaluate_dir,
                           history_paths=history_paths, out_dir=staging, project_root=project_root,
                           duplicates_dir=duplicates_dir)
    report_path = Path(out_dir) / REPORT_FILE
    log.info("report: %s (%.0f KB)", report_path, report_path.stat().st_size / 1024)
    return summary


def _analyse(params: Params, *, prepared_dir: Path, evaluate_dir: Path, history_paths: dict[str, Path],
             out_dir: Path, project_root: Path, duplicates_dir: Path | None = None) -> dict:
    settings = params.analysis
    meta = artifacts.read_prepared_meta(prepared_dir)
    class_names = list(meta.class_names)
    predictions = {model: load_predictions(evaluate_dir, model, num_classes=len(class_names)) for model in MODELS}
    table = per_image_table(predictions["scratch"], predictions["transfer"], class_names=class_names)
    summary = paired_tests.significance(table["right_scratch"].to_numpy(), table["right_transfer"].to_numpy(),
                                 resamples=settings.bootstrap_resamples, confidence_level=settings.confidence_level,
                                 seed=params.seed)
    fileio.atomic_write_text(out_dir / artifacts.PER_IMAGE_FILE, table.to_csv(index=False, float_format="%.6f"))
    twins = deduplicated.load(duplicates_dir) if duplicates_dir is not None else None
    if twins is not None:
        summary.update(deduplicated.summarise(table, twins, full=summary, resamples=settings.bootstrap_resamples,
                                              confidence_level=settings.confidence_level, seed=params.seed))
        fileio.atomic_write_text(out_dir / artifacts.DUPLICATES_FILE,
                                 deduplicated.pair_table(table, twins).to_csv(index=False, float_format="%.4f"))
    shown_twins = deduplicated.best_twins(twins.pairs).head(settings.gallery_size) if twins is not None else None

    selections = select(table, settings=settings)
    pixels = split_pixels(prepared_dir, selections.ids() | set(
        shown_twins["test_id"].astype(int) if shown_twins is not None else ()), meta)
    scores = {model: dict(zip(predictions[model].ids.tolist(), predictions[model].probabilities, strict=True))
              for model in MODELS}
    score_items = score_bar_items(table, selections, pixels, scores=scores, class_names=class_names,
                                  limit=settings.score_bar_classes)
    confused = pd.concat([pairs.assign(model=model) for model, pairs in selections.confused_pairs.items()])
    fileio.atomic_write_text(out_dir / artifacts.MOST_CONFUSED_FILE,
                             confused[["model", "true_class", "predicted_class", "count", "share"]].to_csv(index=False))
    fileio.atomic_write_text(out_dir / artifacts.LABEL_ERRORS_FILE, label_error_candidates(
        table, confidence=settings.label_error_confidence)[
        ["id", "original", "true_class", "predicted_class_scratch", "probability_scratch",
         "predicted_class_transfer", "probability_transfer"]].to_csv(index=False, float_format="%.4f"))

    histories = {model: read_history(history_paths[model]) for model in MODELS}
    drawings = [*gallery_figures(out_dir, table, selections, pixels, score_items),
               functools.partial(figures.training_curves, histories, out_dir / artifacts.TRAINING_CURVES_PLOT)]
    with progress.step("analysis: figures", total=len(drawings), unit="figures") as counter:
        for draw in drawings:
            draw()
            counter.update(1)
    details = fileio.read_json(Path(evaluate_dir) / DETAILS_FILE)
    # 0 when the evaluate stage found a model degenerate: the headline then names no winner.
    summary["comparison_meaningful"] = int(not report.degenerate_models({model: details[model] for model in MODELS}))
    fileio.atomic_write_json(out_dir / artifacts.ANALYSIS_SUMMARY_FILE, summary)

    inputs = report.ReportInputs(
        data={"source": meta.source, "classes": len(class_names), "image_size": meta.image_size,
              "counts": meta.counts},
        class_names=class_names, metrics={model: details[model] for model in MODELS}, summary=summary,
        training={model: training_summary(histories[model]) for model in MODELS},
        figures={name: (path).read_bytes() for name, path in {
            "confusion_scratch": Path(evaluate_dir) / confusion_plot("scratch"),
            "confusion_transfer": Path(evaluate_dir) / confusion_plot("transfer"),
            "reliability": Path(evaluate_dir) / RELIABILITY_FILE,
            "training_curves": out_dir / artifacts.TRAINING_CURVES_PLOT}.items() if path.is_file()},
        galleries=galleries(table, selections, pixels, label_error_confidence=settings.label_error_confidence),
        score_bars=score_items,
        thumbnail_size=settings.thumbnail_size,
        registry=_registry(Path(evaluate_dir)),
        duplicates=deduplicated.report_view(summary, deduplicated.gallery_view(
            table, twins, test_pixels=pixels, size=settings.gallery_size, thumbnail_size=settings.thumbnail_size,
            train_pixels=records.read_images(records.split_files(prepared_dir, "train"),
                                             set(shown_twins["train_id"].astype(int)), meta.image_shape)))
        if twins is not None else None)
    fileio.atomic_write_text(out_dir / REPORT_FILE, report.render_html(inputs))
    fileio.atomic_write_text(out_dir / MARKDOWN_FILE, report.render_markdown(inputs, report_name=REPORT_FILE))
    _log_to_mlflow(summary, evaluate_dir=Path(evaluate_dir), out_dir=out_dir, project_root=project_root)
    log.info("%s", paired_tests.verdict(summary, degenerate=report.degenerate_models(inputs.metrics)))
    if twins is not None:
        log.info("duplicates: %s", deduplicated.sentence(summary))
    return summary


def _registry(evaluate_dir: Path) -> dict | None:
    """runs.json's `registry` (what the promotion policy decided), None without one (evaluate ran elsewhere)."""
    path = evaluate_dir / RUNS_FILE
    return fileio.read_json(path).get("registry") if path.is_file() else None


def _log_to_mlflow(summary: dict, *, evaluate_dir: Path, out_dir: Path, project_root: Path) -> None:
    """The report, Markdown summary and comparison statistics into the evaluate stage's comparison run."""
    runs_path = evaluate_dir / RUNS_FILE
    if not runs_path.is_file():
        log.warning("%s not found: the report is not logged to MLflow", runs_path)
        return
    run_id = fileio.read_json(runs_path)["comparison"]
    client = mlflow.MlflowClient(tracking_uri=store.tracking_uri(project_root))
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        log.warning("MLflow run %s not found (store reset?): the report is not logged to MLflow", run_id)
        return
    numbers = {"accuracy_difference": summary["accuracy_difference"],
               "accuracy_difference_ci_low": summary["accuracy_difference_ci"]["low"],
               "accuracy_difference_ci_high": summary["accuracy_difference_ci"]["high"],
               "mcnemar_p_value": summary["mcnemar"]["p_value"],
               **{key: summary[key] for key in OUTCOMES}}
    if "train_test_duplicates" in summary:
        numbers |= {"train_test_duplicates": summary["train_test_duplicates"],
                    "mcnemar_p_value_deduplicated": summary["deduplicated"]["mcnemar"]["p_value"],
                    **{f"{model}_accuracy_deduplicated": value
                       for model, value in summary["accuracy_deduplicated"].items()}}
    for key, value in numbers.items():
        client.log_metric(run_id, key, float(value))
    for name in (REPORT_FILE, MARKDOWN_FILE, artifacts.ANALYSIS_SUMMARY_FILE):
        client.log_artifact(run_id, str(out_dir / name), artifact_path="analysis")
