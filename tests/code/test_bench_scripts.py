"""The bench scripts: run as modules (no sys.path edits, no program inside a string), one function per training
benchmark, wrong option combinations refused before any work, variants saved under their own names."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re

import pytest

from bench import common, training

pytestmark = pytest.mark.duration(seconds=1)  # about, under make test: orders the modules

BENCH = common.ROOT / "bench"


def test_no_bench_script_edits_sys_path_or_runs_code_from_a_string():
    offenders = []
    for path in sorted(BENCH.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "sys.path" in text or re.search(r"""["']-c["']""", text):
            offenders.append(path.name)
    assert offenders == []


def test_every_benchmark_has_its_own_function_with_a_docstring():
    assert len(set(training.BENCHMARKS.values())) == len(training.BENCHMARKS)
    assert [name for name, function in training.BENCHMARKS.items() if not function.__doc__] == []


@pytest.mark.parametrize(("argv", "message"), [
    (["seed-recipe", "--set", "seed=43"], "apply to residual and seed-recipe-25 only"),
    (["residual", "--reencode-quality", "200"], "a JPEG quality from 1 to 95"),
    (["residual", "--reencode-quality", "50", "--val-fraction", "0.01"], "--set data.val_fraction"),
    (["transfer", "--val-fraction", "0.01"], "--val-fraction applies to residual and seed-recipe-25 only"),
    (["residual", "--validation-only"], "choose on at least 5,000 validation images"),
    (["residual", "--validation-only", "--val-fraction", "0.01"], "choose on at least 5,000 validation images"),
    (["residual", "--validation-only", "--set", "data.val_fraction=0.05"], "choose on at least 5,000"),
    (["residual", "--validation-only", "--set", "data.val_fraction=abc"], "give the validation split as a number"),
    (["residual", "--seed", "1"], "--seed applies to transfer-finetune and transfer-peer only"),
])
def test_wrong_combinations_are_refused_before_any_work(argv, message, capsys):
    parser = training.parser()
    with pytest.raises(SystemExit):
        training.check(parser, parser.parse_args(argv))
    assert message in capsys.readouterr().err


def test_a_right_combination_passes():
    parser = training.parser()
    training.check(parser, parser.parse_args(["residual", "--set", "seed=43", "--reencode-quality", "50"]))
    training.check(parser, parser.parse_args(["residual", "--validation-only", "--val-fraction", "0.1"]))
    training.check(parser, parser.parse_args(["residual", "--validation-only", "--set", "data.val_fraction=0.2"]))


def test_a_variant_is_saved_under_a_name_of_its_own():
    params, name = common.with_assignments({"scratch": {"epochs": 21}}, "residual",
                                           ["scratch.residual_widths=[128,384,384]", "seed=43"])
    assert params == {"scratch": {"epochs": 21, "residual_widths": [128, 384, 384]}, "seed": 43}
    assert name == "residual-residual_widths-128-384-384-seed-43"


def test_a_variant_name_stays_one_file_name_whatever_the_key():
    _, name = common.with_assignments({}, "residual", ["scratch.a/b=1"])
    assert name == "residual-a-b-1"


def test_scratch_variant_names_the_split_it_trains_on(tmp_path, monkeypatch):
    trained = {}

    def fake_train(directory, name, overrides, prepared, score_test=True):
        trained.update(name=name, overrides=overrides, prepared=prepared, score_test=score_test)
        return {"test_accuracy": 0.5 if score_test else None}

    def fake_prepare(directory, name, data_overrides, raw=None):
        prepared = directory / "data" / f"prepared-{name}"
        prepared.mkdir(parents=True)
        train = round(50000 * (1 - data_overrides["val_fraction"]))
        (prepared / "meta.json").write_text(f'{{"counts": {{"train": {train}, "val": {50000 - train}}}}}')
        return prepared

    monkeypatch.setattr(training, "train_scratch", fake_train)
    monkeypatch.setattr(common, "prepare_variant", fake_prepare)
    arguments = argparse.Namespace(val_fraction=0.01, set=[], reencode_quality=None, validation_only=False)
    name, result = training.scratch_variant(tmp_path, "seed-recipe-25", {"scratch": {"epochs": 25}}, arguments)
    assert name == "seed-recipe-25-val-0.01"
    assert trained["prepared"] == tmp_path / "data" / "prepared-val-0.01"
    assert trained["overrides"]["data"] == {"val_fraction": 0.01}
    assert result["train_images"] == 49500 and trained["score_test"]
    # A run that helps choose: its own name, validation only, the test split never scored.
    arguments = argparse.Namespace(val_fraction=0.1, set=[], reencode_quality=None, validation_only=True)
    name, result = training.scratch_variant(tmp_path, "residual", {"scratch": {"epochs": 8}}, arguments)
    assert name == "select-residual-val-0.1" and not trained["score_test"] and result["test_accuracy"] is None
    assert (result["train_images"], result["val_images"]) == (45000, 5000)


def test_the_fine_tuning_peer_is_a_valid_configuration_of_the_pipeline():
    """keras-io's recipe must pass the same typed params check a user's params.yaml does."""
    import yaml

    from imgclf import config, smoke_copy

    base = yaml.safe_load((common.ROOT / "params.yaml").read_text())
    params = config.params_from_dict(smoke_copy.merge(base, training.KERAS_IO_FINETUNE))
    assert (params.transfer.learning_rate, params.transfer.finetune_layers) == (0.01, 20)
    assert params.augment.rotate == 0.15 and params.augment.flip == "horizontal_and_vertical"


def test_a_timed_run_starts_without_a_killed_runs_resume_backups(tmp_path):
    # A killed run's backups would let the stage resume, and the benchmark would time only the epochs left.
    out = tmp_path / "bench" / "vs-airbench95-keras-seed-1"
    (out / "resume" / "fit").mkdir(parents=True)
    (out / "resume" / "fit" / "history.csv").write_text("epoch\n1\n")
    assert common.fresh_output(out) == out
    assert not out.exists()
    assert common.fresh_output(out) == out  # nothing there: nothing to do


def test_every_project_import_in_a_bench_script_resolves():
    """The bench scripts import the project inside functions (each in a process of its own, so TensorFlow loads
    only there): a module renamed by a refactor fails only when that function runs, which for the test-accuracy
    probe was the last minute of a 50-minute timed run. Checked here for every import at every depth, by Python's
    own import system."""
    unresolved = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or (node.module or "").split(".")[0] not in ("imgclf", "bench"):
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError as error:
                unresolved.append(f"{path.name}:{node.lineno}: {error}")
                continue
            unresolved += [f"{path.name}:{node.lineno}: {node.module} has no {alias.name}" for alias in node.names
                           if not hasattr(module, alias.name)
                           and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
    assert unresolved == []
