"""A DVC remote (a local directory standing in for S3/GCS/Azure) and scripts/retrain.sh against it, on real git clones.

From the trained fixture project: add a default remote, commit, push (by the retrain script's first run, with the
remote still empty); then a fresh `git clone` + `dvc pull` has every output and retrains nothing; then the
retrain script in such a clone applies a params override, pushes, and writes the params/metrics diff report.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from imgclf import smoke_copy
from imgclf.entry_points import PROJECT_ROOT

# `pushed` (a copy, a remote, the retrain script's first run) is built once; the module runs on one worker.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = PROJECT_ROOT / "scripts" / "retrain.sh"


def retrain(root: Path, *args: str) -> subprocess.CompletedProcess:
    """scripts/retrain.sh in `root`, as a user runs it; fail with its output when it fails."""
    result = subprocess.run(["bash", str(SCRIPT), *args], cwd=root, env=smoke_copy.environment(root),
                            capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, f"scripts/retrain.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def clone(source: Path, destination: Path) -> Path:
    smoke_copy.run_git(source, "clone", "--quiet", str(source), str(destination))
    return destination


@pytest.fixture(scope="module")
def pushed(copy_trained_project, tmp_path_factory):
    """The trained project with a default local remote, committed, then the retrain script's first run
    (nothing to pull, nothing to retrain, everything pushed). Returns (project, remote, script result)."""
    base = tmp_path_factory.mktemp("remote")
    project = copy_trained_project(base / "project")
    remote = base / "remote"
    smoke_copy.dvc(project, "remote", "add", "--default", "storage", str(remote))
    smoke_copy.commit(project, "DVC remote: a local directory")
    first_commit = smoke_copy.run_git(project, "rev-list", "--max-parents=0", "HEAD").stdout.strip()
    result = retrain(project, "--base", first_commit)
    return project, remote, result, first_commit


def test_first_run_tolerates_an_empty_remote_and_fills_it(pushed):
    project, remote, result, first_commit = pushed
    assert "lacks outputs of this commit (a first run with an empty remote?)" in result.stderr
    assert smoke_copy.stages_ran(result.stdout) == list(smoke_copy.ALWAYS_RUN), \
        "the trained project has nothing to rerun"
    assert any(path.is_file() for path in remote.rglob("*")), "dvc push filled the remote"
    assert smoke_copy.dvc(project, "status", "--cloud", "--quiet", check=False).returncode == 0, "all pushed"
    report = Path(result.stdout.strip().splitlines()[-1])
    assert report == project / "results" / "ci" / "report.md"
    text = report.read_text()
    # The base is the commit before the first pipeline run: no metrics there, so its column is empty.
    assert f"`{first_commit}` has no metrics to compare with" in text
    assert "No params differ" in text


def test_clone_and_pull_is_up_to_date_without_retraining(pushed, tmp_path):
    project, _remote, _result, _base = pushed
    copy = clone(project, tmp_path / "clone")
    assert not (copy / "models" / "scratch" / "model.keras").exists(), "git holds pointers, not outputs"
    smoke_copy.dvc(copy, "pull")

    assert not smoke_copy.stale_stages(copy)
    repro = smoke_copy.dvc(copy, "repro")
    assert smoke_copy.stages_ran(repro.stdout) == list(smoke_copy.ALWAYS_RUN)
    assert not (copy / "mlflow.db").exists(), "nothing trained, so nothing was tracked"
    for path in ("models/scratch/model.keras", "models/transfer/model.keras", "results/evaluate/metrics.json",
                 "results/analysis/summary.md"):
        assert (copy / path).read_bytes() == (project / path).read_bytes(), path


def test_retrain_script_in_a_clone_reports_params_and_metrics_diff(pushed, tmp_path, new_mlflow_store):
    project, _remote, _result, _base = pushed
    copy = clone(project, tmp_path / "clone")
    new_mlflow_store(copy)  # the empty store the analyze stage would create (git ignores it)
    # An override that reruns only the analyze stage (seconds): its interval level is a metric, so the diff
    # has rows. A retrained model would do too, but minutes of training prove nothing more here. (The clone has
    # its own, empty MLflow store; analyze logs to the run of the original only when it can find it.)
    result = retrain(copy, "analysis.confidence_level=0.9")

    assert "dvc pull from remote 'storage'" in result.stderr and "lacks outputs" not in result.stderr
    assert "Running stage 'analyze'" in result.stdout
    assert not re.search(r"Running stage '(train_|extract_features|evaluate)", result.stdout), "nothing retrained"
    assert smoke_copy.dvc(copy, "status", "--cloud", "--quiet", check=False).returncode == 0, "new outputs pushed"

    report = Path(result.stdout.strip().splitlines()[-1])
    assert report == copy / "results" / "ci" / "report.md"
    text = report.read_text()
    assert "compared with `origin/main`" in text and "analysis.confidence_level=0.9" in text
    params_row = re.search(r"^\|\s*params\.yaml\s*\|\s*analysis\.confidence_level\s*\|\s*0\.95\s*\|\s*0\.9\s*\|$",
                           text, re.MULTILINE)
    assert params_row, text
    assert re.search(r"^\|\s*Path\s*\|\s*Metric\s*\|\s*origin/main\s*\|\s*workspace\s*\|\s*Change\s*\|$", text,
                     re.MULTILINE), text
    assert re.search(r"^\|\s*results/analysis/summary\.json\s*\|\s*accuracy_difference_ci\.level\s*\|\s*0\.95\s*\|"
                     r"\s*0\.9\s*\|", text, re.MULTILINE), text
    summary = (copy / "results" / "analysis" / "summary.md").read_text()
    assert "90%" in summary and text.rstrip().endswith(summary.rstrip())


@pytest.mark.slow(seconds=75)
def test_partial_retrain_in_a_clone_records_the_pulled_model_in_its_own_store(pushed, tmp_path, new_mlflow_store):
    # A clone's embedded store lacks the runs of the machine that trained the pulled models: retraining one
    # model must still compare, register and crown both (the pulled one is recorded in a new run here).
    project, _remote, _result, _base = pushed
    copy = clone(project, tmp_path / "clone")
    new_mlflow_store(copy)  # the empty store the first stage would create (git ignores it)
    smoke_copy.dvc(copy, "pull")
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["transfer"]["epochs"] += 1
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    repro = smoke_copy.dvc(copy, "repro")
    assert "Running stage 'train_transfer'" in repro.stdout and "Running stage 'train_scratch'" not in repro.stdout
    assert "is not in" in repro.stderr, "the missing run is reported"

    pulled_run = json.loads((copy / "models" / "scratch" / "run.json").read_text())["run_id"]
    runs = json.loads((copy / "results" / "evaluate" / "runs.json").read_text())
    assert runs["scratch"] != pulled_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    recorded = client.get_run(runs["scratch"])
    assert recorded.data.tags["imgclf.recorded_run_id"] == pulled_run
    assert recorded.data.tags["mlflow.parentRunId"] == runs["comparison"]
    epochs = params["scratch"]["epochs"]
    assert len(client.get_metric_history(runs["scratch"], "val_accuracy")) == epochs
    assert "test_accuracy" in recorded.data.metrics
    for model in ("scratch", "transfer"):
        entry = runs["registry"]["models"][model]
        assert client.get_model_version(entry["name"], str(entry["version"])).run_id == runs[model]
    champion = client.get_model_version_by_alias(f"imgclf-{runs['registry']['champion']}", "champion")
    assert champion.run_id == runs[runs["registry"]["champion"]]
