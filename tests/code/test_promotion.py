"""The registry's promotion policy: validation images decide, by a paired test, never recency or the test split."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from imgclf.evaluation import promotion
from imgclf.tracking import registry

pytestmark = pytest.mark.duration(seconds=9)  # about, under make test: orders the modules


def _right(count: int, wrong: list[int]) -> np.ndarray:
    right = np.ones(count, dtype=bool)
    right[wrong] = False
    return right


def test_the_first_model_becomes_champion_and_a_significantly_better_one_replaces_it():
    candidate = _right(400, [])
    assert promotion.decide(candidate_right=candidate, champion_right=None, champion=None, same_data=True,
                            level=0.05, queued=False).alias == "champion"
    better = promotion.decide(candidate_right=candidate, champion_right=_right(400, list(range(30))),
                              champion="imgclf-scratch version 1", same_data=True, level=0.05, queued=False)
    assert better.alias == "champion" and better.candidate_only_right == 30 and better.champion_only_right == 0
    assert better.p_value < 1e-6 and better.tags()["promotion.decision"] == "champion"


@pytest.mark.parametrize(("champion_wrong", "why"), [(list(range(3)), "not significantly better"),
                                                     ([], "not significantly better")])
def test_a_model_not_significantly_better_becomes_challenger(champion_wrong, why):
    # Three more right of 400 is noise (p = 0.25); a tie, or a worse sweep, never takes the alias.
    decision = promotion.decide(candidate_right=_right(400, []), champion_right=_right(400, champion_wrong),
                                champion="imgclf-transfer version 3", same_data=True, level=0.05, queued=False)
    assert decision.alias == "challenger" and why in decision.reason and decision.p_value >= 0.05
    worse = promotion.decide(candidate_right=_right(400, list(range(40))), champion_right=_right(400, []),
                             champion="imgclf-transfer version 3", same_data=True, level=0.05, queued=False)
    assert worse.alias == "challenger" and worse.champion_only_right == 40


def test_other_data_or_a_queued_experiment_is_never_promoted_automatically():
    kwargs = dict(candidate_right=_right(400, []), champion_right=_right(400, list(range(100))),
                  champion="imgclf-scratch version 1", level=0.05)
    other_data = promotion.decide(**kwargs, same_data=False, queued=False)
    assert other_data.alias == "challenger" and "other prepared data" in other_data.reason
    queued = promotion.decide(**kwargs, same_data=True, queued=True)
    assert queued.alias == "challenger" and "dvc exp apply" in queued.reason
    missing = promotion.decide(**{**kwargs, "champion_right": None}, same_data=True, queued=False)
    assert missing.alias == "challenger" and "not recorded" in missing.reason


def test_the_candidate_is_chosen_on_validation_not_test():
    assert promotion.candidate_of({"scratch": 0.7, "transfer": 0.9}, {"scratch": 5, "transfer": 9}) == "transfer"
    assert promotion.candidate_of({"scratch": 0.9, "transfer": 0.9}, {"scratch": 10, "transfer": 5}) == "transfer"
    assert promotion.candidate_of({"scratch": 0.9, "transfer": 0.9}, {"scratch": 5, "transfer": 5}) == "scratch"
    assert promotion.candidate_of({"scratch": None, "transfer": None}, {}) is None


def test_aliases_move_between_the_two_registered_models_on_a_real_store(tmp_path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("promotion", artifact_location=(tmp_path / "artifacts").as_uri())
    versions = {}
    for model, name in registry.REGISTERED_MODELS.items():
        run = client.create_run(experiment)
        path = tmp_path / "evaluation" / f"{model}_validation_predictions.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez(path, ids=np.arange(4), labels=np.zeros(4, int), predicted=np.zeros(4, int))
        client.log_artifact(run.info.run_id, str(path), artifact_path="evaluation")
        client.create_registered_model(name)
        versions[model] = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model",
                                                      run_id=run.info.run_id)
    assert registry.current_champion(client) is None
    registry.move_alias(client, registry.CHAMPION, versions["scratch"])
    assert registry.current_champion(client).name == "imgclf-scratch"
    registry.move_alias(client, registry.CHAMPION, versions["transfer"])
    assert registry.current_champion(client).name == "imgclf-transfer"
    assert registry.CHAMPION not in client.get_registered_model("imgclf-scratch").aliases
    recorded = registry.evaluation_artifact(client, versions["scratch"].run_id, "scratch_validation_predictions.npz")
    assert list(recorded["ids"]) == [0, 1, 2, 3]
    assert registry.evaluation_artifact(client, versions["scratch"].run_id, "absent.npz") is None


def test_the_report_says_what_the_registry_decided():
    from imgclf.evaluation import report

    recorded = {"candidate": "transfer", "champion_uri": "models:/imgclf-scratch@champion", "champion_version": 1,
                "decision": {"alias": "challenger", "reason": "not significantly better than the champion: ..."},
                "models": {"transfer": {"name": "imgclf-transfer", "version": 3}}}
    sentence = report.registry_sentence(recorded)
    assert "imgclf-transfer version 3: challenger (not significantly better" in sentence
    assert sentence.endswith("The champion served: models:/imgclf-scratch@champion (version 1).")
    assert report.registry_sentence(None) is None


def _registered_pair(client, tmp_path) -> dict:
    experiment = client.create_experiment("recovery", artifact_location=(tmp_path / "artifacts").as_uri())
    versions = {}
    for model, name in registry.REGISTERED_MODELS.items():
        run = client.create_run(experiment)
        client.create_registered_model(name)
        versions[model] = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model",
                                                      run_id=run.info.run_id)
    return versions


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    return int(finished.stdout)


@pytest.mark.parametrize("finished", [False, True])
def test_an_evaluation_killed_while_moving_the_champion_is_undone_by_the_next_run(tmp_path, monkeypatch, finished):
    """Issue 26 row 16: kill -9 between the alias move and runs.json. The journal (imgclf.tracking.recovery)
    outlives the killed process; the next `dvc repro`'s fingerprint_data stage (or `mlflow run -e predict`)
    reconciles: the interrupted move is undone, a finished evaluation's move stands."""
    from imgclf.tracking import recovery

    monkeypatch.delenv("DVC_ROOT", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = _registered_pair(client, tmp_path)
    registry.move_alias(client, registry.CHAMPION, versions["scratch"])  # a finished evaluation's champion

    # What evaluate does (evaluate._register): journal, then move; killed before runs.json is written.
    runs_file = tmp_path / "results" / "evaluate" / "runs.json"
    journal = recovery.begin(client, project_root=tmp_path, comparison_id="c0ffee", runs_file=runs_file,
                             moves={registry.CHAMPION: ["imgclf-transfer", "1"]})
    registry.move_alias(client, registry.CHAMPION, versions["transfer"])
    assert recovery.reconcile(tmp_path) == [], "a running evaluation's journal is left alone"
    if finished:  # killed after runs.json was in place but before the journal was deleted: the move stands
        runs_file.parent.mkdir(parents=True)
        runs_file.write_text(json.dumps({"comparison": "c0ffee"}))
    record = json.loads(journal.read_text())
    journal.write_text(json.dumps({**record, "pid": _dead_pid()}))  # the evaluation was killed

    restored = recovery.reconcile(tmp_path)
    champion = registry.current_champion(client)
    assert not journal.exists(), "each journal is settled once"
    if finished:
        assert restored == [] and champion.name == "imgclf-transfer"
    else:
        assert champion.name == "imgclf-scratch" and str(champion.version) == "1"
        assert restored and "interrupted" in restored[0] and "restored to imgclf-scratch version 1" in restored[0]
        assert registry.CHAMPION not in client.get_registered_model("imgclf-transfer").aliases
        assert recovery.ROLLED_BACK_TAG in client.get_model_version("imgclf-transfer", "1").tags
    assert recovery.reconcile(tmp_path) == []


def test_a_move_made_since_by_a_finished_evaluation_is_kept(tmp_path, monkeypatch):
    from imgclf.tracking import recovery

    monkeypatch.delenv("DVC_ROOT", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = _registered_pair(client, tmp_path)
    journal = recovery.begin(client, project_root=tmp_path, comparison_id="dead", runs_file=tmp_path / "runs.json",
                             moves={registry.CHALLENGER: ["imgclf-transfer", "1"]})
    registry.move_alias(client, registry.CHALLENGER, versions["transfer"])
    registry.move_alias(client, registry.CHALLENGER, versions["scratch"])  # a later, finished evaluation
    journal.write_text(json.dumps({**json.loads(journal.read_text()), "pid": _dead_pid()}))
    assert recovery.reconcile(tmp_path) == []
    assert str(client.get_model_version_by_alias("imgclf-scratch", registry.CHALLENGER).version) == "1"
