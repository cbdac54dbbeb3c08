"""Fitting pieces without a full training run: schedules, the resume directory, the learning-rate finder."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest

from imgclf import artifacts
from imgclf.config import params_from_dict
from imgclf.entry_points import PROJECT_ROOT
from imgclf.training import fitting, lr_finder

pytestmark = pytest.mark.duration(seconds=6)  # about, under make test: orders the modules


def test_one_cycle_warms_up_then_anneals():
    schedule = fitting.OneCycle(0.01, total_steps=100)
    rates = [float(schedule(step)) for step in (0, 30, 65, 100)]
    assert rates[0] == pytest.approx(0.01 / 25)
    assert rates[1] == pytest.approx(0.01, rel=1e-4)
    assert rates[1] > rates[2] > rates[3]
    assert rates[3] == pytest.approx(0.01 / 1e4, rel=1e-3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(restored(50)) == pytest.approx(float(schedule(50)))


@pytest.mark.parametrize(("schedule", "kind"), [("constant", float), ("plateau", float),
                                                ("step", keras.optimizers.schedules.ExponentialDecay),
                                                ("cosine", keras.optimizers.schedules.CosineDecay),
                                                ("one_cycle", fitting.OneCycle)])
def test_schedules_from_params(params_dict, schedule, kind):
    params_dict["scratch"]["lr_schedule"] = schedule
    config = params_from_dict(params_dict).scratch
    assert isinstance(fitting.learning_rate(config, steps_per_epoch=10), kind)


@pytest.mark.parametrize(("name", "kind"), [("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
                                            ("sgd", keras.optimizers.SGD)])
def test_optimizers_from_params(params_dict, name, kind):
    params_dict["scratch"].update(optimizer=name, weight_decay=0.01)
    optimizer = fitting.make_optimizer(params_from_dict(params_dict).scratch, steps_per_epoch=10)
    assert type(optimizer) is kind and optimizer.weight_decay == pytest.approx(0.01)


def test_resume_state_discards_a_stale_backup(tmp_path):
    directory = tmp_path / "resume"
    state = fitting.ResumeState(directory, fingerprint={"epochs": 3}, enabled=True)
    backup = state.backup_dir("fit")
    backup.mkdir(parents=True)
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    fitting.write_history(state.history_path("fit"), [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5},
                                                      {"epoch": 3, "loss": 0.4}])
    same = fitting.ResumeState(directory, fingerprint={"epochs": 3}, enabled=True)
    assert same.completed_epochs("fit") == 2
    assert [row["epoch"] for row in same.history("fit")] == [1, 2], "a row written after the backup is dropped"
    changed = fitting.ResumeState(directory, fingerprint={"epochs": 4}, enabled=True)
    assert changed.completed_epochs("fit") == 0 and changed.history("fit") == []
    off = fitting.ResumeState(directory, fingerprint={"epochs": 4}, enabled=False)
    assert off.callbacks("fit") == []


def test_lr_finder_sweeps_upward_and_stops_on_divergence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(1e-5), loss="categorical_crossentropy")
    sweep = lr_finder.LearningRateSweep(start=1e-4, end=1e3, steps=64)
    model.fit(x, y, batch_size=16, epochs=4, callbacks=[sweep], verbose=0)
    assert np.all(np.diff(sweep.recorded_rates) > 0)
    assert len(sweep.losses) == len(sweep.recorded_rates) > 10
    suggestions = lr_finder.suggest(sweep.recorded_rates, sweep.losses)
    assert 1e-4 <= suggestions["steepest"] <= 1e3


def test_suggestion_finds_the_steepest_descent():
    rates = list(np.geomspace(1e-6, 1, 100))
    losses = list(2 - np.tanh((np.log10(rates) + 3) * 2))  # steepest at 1e-3
    assert lr_finder.suggest(rates, losses)["steepest"] == pytest.approx(1e-3, rel=0.2)


def test_exp_args_turns_a_profile_into_dvc_arguments():
    result = subprocess.run([sys.executable, "-m", "imgclf", "exp-args", "profiles/scratch_best.yaml"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    arguments = shlex.split(result.stdout)  # shell-quoted, for the README's `eval "dvc exp run $(...)"`
    assert "scratch.lr_schedule=\"one_cycle\"" in arguments and arguments.count("-S") == len(arguments) // 2


def test_lr_finder_compiles_through_the_stage_compile_path(write_prepared, tmp_path, tiny_params_dict, monkeypatch):
    """The sweep uses the configured optimizer and label smoothing (a constant rate, which it sets itself)."""
    from imgclf.training import recipe

    write_prepared(tmp_path / "prepared", class_names=["a", "b"], per_class={"train": 16, "val": 2, "test": 2})
    tiny_params_dict["scratch"].update(optimizer="sgd", label_smoothing=0.1, lr_schedule="cosine")
    compiled = []
    real_compile = recipe.compile_model
    monkeypatch.setattr(recipe, "compile_model", lambda model, config, **kwargs: (
        compiled.append((config, kwargs)), real_compile(model, config, **kwargs))[1])
    suggestions = lr_finder.run(params_from_dict(tiny_params_dict), model_name="scratch",
                                prepared_dir=tmp_path / "prepared", features_dir=tmp_path / "features",
                                out_dir=tmp_path / "out", steps=12)
    (config, kwargs), = compiled
    assert (config.optimizer, config.label_smoothing, config.lr_schedule) == ("sgd", 0.1, "constant")
    assert kwargs["learning_rate"] == pytest.approx(1e-7)
    assert set(suggestions) == {"steepest", "min_loss_over_10"} and (tmp_path / "out" / "lr_find_scratch.csv").is_file()


def test_epoch_logger_names_each_metric_by_its_split_and_logs_validation_first(tmp_path, params_dict,
                                                                               new_mlflow_store):
    """MLflow gets `train_accuracy` (Keras: `accuracy`) beside `val_accuracy`, and `val_accuracy` first: the compare
    page's parallel-coordinates plot opens on the first metric the runs logged. history.csv keeps Keras's names,
    which dvc.yaml's plots read."""
    from imgclf.tracking import runs
    from imgclf.training import recipe

    uri = new_mlflow_store(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    recipe.compile_model(model, params_from_dict(params_dict).scratch, steps_per_epoch=4, jit_compile=False)
    history = tmp_path / "history.csv"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        # An experiment of this store: another test in this worker may have left MLFLOW_EXPERIMENT_ID set.
        mlflow.set_experiment("epoch-logger")
        with runs.start_run(run_name="epoch-logger") as run:
            model.fit(x, y, validation_data=(x[:16], y[:16]), batch_size=16, epochs=2, verbose=0,
                      callbacks=[fitting.EpochLogger([history], examples_per_epoch=len(x))])
    finally:
        mlflow.set_tracking_uri(previous)

    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = list(client.get_run(run.info.run_id).data.metrics)
    assert {"train_accuracy", "train_loss", "val_accuracy", "val_loss", "learning_rate"} <= set(logged)
    assert not {"accuracy", "loss"} & set(logged), f"a metric that does not say its split: {logged}"
    assert logged[0] == "val_accuracy", f"the compare page would open on {logged[0]}"
    assert [metric.step for metric in client.get_metric_history(run.info.run_id, "train_accuracy")] == [1, 2]
    assert {"epoch", "accuracy", "loss", "val_accuracy", "val_loss"} <= set(artifacts.read_history(history)[0])
