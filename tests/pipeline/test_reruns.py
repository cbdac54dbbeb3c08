"""A change reruns only what it affects: dvc.yaml's deps are each stage's import closure (tests/code/test_deps.py)
and the imports follow the pipeline (pyproject's import-linter layers), so an edit to one part of the code makes
exactly the stages that run it stale. Checked with real DVC on a copy of the finished smoke pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf import smoke_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAININGS = {"train_scratch", "extract_features", "train_transfer"}

# file edited -> exactly the stages `dvc status` calls stale: those that run the file (the stages after them rerun
# in `dvc repro` only when their inputs change, e.g. evaluate after a retraining).
EXPECTED = {
    "imgclf/figures.py": {"preview", "evaluate", "analyze"},
    "imgclf/tracking/packaging.py": {"evaluate"},
    "imgclf/evaluation/report.py": {"analyze"},
    "imgclf/evaluation/templates/report.html.j2": {"analyze"},
    "imgclf/training/scratch.py": {"train_scratch"},  # preprocess and the other trainer stay up to date
    "imgclf/training/transfer.py": {"train_transfer"},
    "imgclf/training/scratch_model.py": {"train_scratch"},
    "imgclf/training/transfer_model.py": {"extract_features", "train_transfer"},
}


def _edit(path: Path) -> str:
    """Append a harmless line (a real content change) and return the original text."""
    original = path.read_text(encoding="utf-8")
    path.write_text(original + ("{# edited #}\n" if path.suffix == ".j2" else "# edited\n"), encoding="utf-8")
    return original


def test_an_edit_makes_stale_exactly_the_stages_that_run_the_edited_code(copy_trained_project, tmp_path):
    root = copy_trained_project(tmp_path / "copy")
    assert smoke_copy.stale_stages(root) == set(), "the finished pipeline starts up to date"
    for relative, expected in EXPECTED.items():
        path = root / relative
        original = _edit(path)
        stale = smoke_copy.stale_stages(root)
        path.write_text(original, encoding="utf-8")
        assert stale == expected, f"editing {relative} made {sorted(stale)} stale, expected {sorted(expected)}"
        if relative.startswith(("imgclf/figures", "imgclf/tracking", "imgclf/evaluation")):
            assert not stale & TRAININGS, f"editing {relative} would retrain"
    assert smoke_copy.stale_stages(root) == set(), "restoring the files restores the state"


def test_a_new_backbone_in_the_registry_reruns_check_params_alone(copy_trained_project, tmp_path):
    # extract_features reads check_params' resolution of transfer.backbone (data/backbone.json), not the registry:
    # the entry in use resolves to the same bytes, so DVC reruns nothing after check_params.
    root = copy_trained_project(tmp_path / "copy")
    registry = root / "imgclf/training/backbones.py"
    text = registry.read_text(encoding="utf-8")
    entry = '    "efficientnet_b0": BackboneSpec("EfficientNetB0", "none"),\n'
    assert entry in text
    registry.write_text(text.replace(entry, entry + '    "efficientnet_b2": BackboneSpec("EfficientNetB2", "none"),\n'),
                        encoding="utf-8")
    assert smoke_copy.stale_stages(root) == {"check_params"}
    result = smoke_copy.dvc(root, "repro")
    assert smoke_copy.stages_ran(result.stdout) == ["check_params", *smoke_copy.ALWAYS_RUN]
