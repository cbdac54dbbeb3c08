"""bench.vs_airbench's summary: which seed runs count, the means, spreads and the time ratio."""

from __future__ import annotations

import json
import sys

import pytest

from bench import common, tables, vs_airbench

XEON = {"model": "Intel(R) Xeon(R) Processor", "flags": ["amx_bf16", "avx2", "avx512_bf16", "avx512f"], "cores": 2}
EPYC = {"model": "AMD EPYC 9B14", "flags": ["avx2", "avx512f"], "cores": 2}
KERAS_CONFIGURATION = {"scratch": {"epochs": 17}}


def run(side: str, seed: int, accuracy: float, minutes: float, *, date: str = "2026-12-06 12:00:00", cpu=XEON,
        contended: bool = False, configuration: dict | None = None) -> tuple[str, dict]:
    configuration = configuration or (KERAS_CONFIGURATION if side == "keras" else {"recipe": "airbench95"})
    record = {"side": side, "seed": seed, "tta": "flip", "test_accuracy": accuracy, "seconds": minutes * 60,
              "configuration": configuration,
              "provenance": {"date": date, "cpu": cpu, "contended": contended, "command": "python -m bench.x"}}
    return vs_airbench.run_name(side, seed), record


def test_three_seeds_each_give_means_spreads_and_the_time_ratio():
    records = dict([run("keras", 1, 0.915, 33.0), run("keras", 2, 0.917, 35.0), run("keras", 3, 0.919, 34.0),
                    run("reference", 1, 0.914, 36.0), run("reference", 2, 0.916, 37.0),
                    run("reference", 3, 0.912, 35.0)])
    summary = vs_airbench.summarize(records)
    assert summary["keras"]["accuracy_mean"] == pytest.approx(0.917)
    assert summary["keras"]["accuracy_sd"] == pytest.approx(0.002)
    assert summary["reference"]["minutes_mean"] == pytest.approx(36.0)
    assert summary["keras_reaches_reference_accuracy"] is True
    assert summary["time_ratio"] == pytest.approx(34.0 / 36.0, abs=1e-3)
    assert summary["seeds_each"] == 3 and summary["complete"] is True and summary["left_out"] == []


def test_a_keras_mean_below_the_reference_has_no_time_ratio_however_fast():
    records = dict([run("keras", 1, 0.90, 10.0), run("keras", 2, 0.91, 10.0), run("reference", 1, 0.914, 36.0)])
    summary = vs_airbench.summarize(records)
    assert summary["keras_reaches_reference_accuracy"] is False
    assert summary["time_ratio"] is None
    assert summary["minutes_ratio"] == pytest.approx(10.0 / 36.0, abs=1e-3)
    assert summary["seeds_each"] == 1 and summary["complete"] is False


def test_contended_runs_other_cpus_and_earlier_configurations_are_left_out_with_the_reason():
    records = dict([
        run("keras", 1, 0.915, 45.0, date="2026-12-06 10:00:00", configuration={"scratch": {"epochs": 21}}),
        run("keras", 2, 0.915, 33.0, date="2026-12-06 11:00:00"),
        run("keras", 3, 0.915, 60.0, date="2026-12-06 11:30:00", contended=True),
        run("reference", 1, 0.914, 20.0, date="2026-12-05 09:00:00", cpu=EPYC),
        run("reference", 2, 0.914, 36.0, date="2026-12-06 12:00:00"),
    ])
    summary = vs_airbench.summarize(records)
    why = {left["result"]: left["why"] for left in summary["left_out"]}
    assert why == {"vs-airbench95-keras-seed-1": "an earlier keras configuration",
                   "vs-airbench95-keras-seed-3": "contended: the machine was not idle",
                   "vs-airbench95-reference-seed-1": "another CPU: AMD EPYC 9B14 (AVX-512), 2 cores"}
    assert [row["seed"] for row in summary["keras"]["runs"]] == [2]
    assert summary["time_ratio"] == pytest.approx(33.0 / 36.0, abs=1e-3)


def test_no_runs_is_an_error_that_says_what_to_run():
    with pytest.raises(ValueError, match=r"python -m bench\.vs_airbench keras"):
        vs_airbench.summarize({})


def test_the_table_shows_every_counted_run_the_means_and_what_was_left_out():
    records = dict([run("keras", 1, 0.915, 45.0), run("reference", 1, 0.914, 36.0),
                    run("reference", 2, 0.916, 37.0, contended=True)])
    summary = {**vs_airbench.summarize(records), "provenance": {"date": "2026-12-06 13:00:00"}}
    text = tables.vs_airbench95({"vs-airbench95": summary})
    assert "| Keras, profiles/scratch_residual.yaml | 1 | 91.50% | 45.0 |" in text
    assert "`time_ratio` **1.25**" in text
    assert "1 seed each (fewer than the 3 a side the comparison needs)" in text
    records.update([run("keras", 2, 0.917, 44.0), run("keras", 3, 0.916, 46.0)])
    summary = {**vs_airbench.summarize(records), "provenance": {"date": "2026-12-06 13:00:00"}}
    assert "3 Keras seeds, 1 reference seed (fewer than" in tables.vs_airbench95({"vs-airbench95": summary})
    assert "left out: `vs-airbench95-reference-seed-2.json`, contended" in text
    assert tables.vs_airbench95({}) == "No run yet.\n"


def test_the_reference_without_an_environment_with_pytorch_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS", tmp_path)  # no seed saved: the interpreter check is the one that stops it
    monkeypatch.setattr("sys.argv", ["vs_airbench", "reference", "--dir", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="reference needs --python"):
        vs_airbench.main()
    assert not (tmp_path / "nowhere").exists()


def test_a_reference_interpreter_that_does_not_exist_is_refused_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS", tmp_path)  # no seed saved: the interpreter check is the one that stops it
    monkeypatch.setattr("sys.argv", ["vs_airbench", "reference", "--python", str(tmp_path / "no-python"),
                                     "--dir", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="is not an executable"):
        vs_airbench.main()
    assert not (tmp_path / "nowhere").exists()


def test_a_seed_already_saved_is_not_overwritten_unless_asked(monkeypatch, tmp_path):
    # A seed measured on another CPU belongs to that CPU's set: a new run under the same name must not drop it.
    name, record = run("reference", 1, 0.9177, 33.4, cpu=XEON)
    (tmp_path / f"{name}.json").write_text(json.dumps(record))
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr("sys.argv", ["vs_airbench", "reference", "--seed", "1", "--dir", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match=r"already holds this seed, measured 2026-12-06 12:00:00 on Intel.*--replace"):
        vs_airbench.main()
    assert json.loads((tmp_path / f"{name}.json").read_text()) == record
    assert not (tmp_path / "nowhere").exists()
    # --replace passes this check (the next one, the missing PyTorch interpreter, stops it here)
    monkeypatch.setattr("sys.argv", [*sys.argv, "--replace"])
    with pytest.raises(SystemExit, match="reference needs --python"):
        vs_airbench.main()
    # a seed not yet measured passes too
    assert vs_airbench.overwrite_refusal(tmp_path / "vs-airbench95-reference-seed-2.json") is None


def test_each_other_cpu_gets_its_own_summary_and_table_and_no_ratio_mixes_two_machines():
    records = dict([
        run("reference", 1, 0.9177, 33.4, date="2026-12-06 12:00:00"),
        run("reference", 2, 0.9167, 35.3, date="2026-12-06 13:00:00"),
        run("keras", 1, 0.9170, 70.0, date="2026-12-07 10:00:00", cpu=EPYC),
        run("reference", 5, 0.9160, 50.0, date="2026-12-07 11:00:00", cpu=EPYC),
    ])
    summary = vs_airbench.summarize(records)
    assert summary["cpu"] == "AMD EPYC 9B14 (AVX-512), 2 cores"
    assert summary["minutes_ratio"] == pytest.approx(70.0 / 50.0, abs=1e-3)  # never 70 over the Xeon's 34.35
    [xeon] = summary["other_cpus"]
    assert xeon["cpu"].startswith("Intel(R) Xeon(R) Processor")
    assert [row["seed"] for row in xeon["reference"]["runs"]] == [1, 2] and xeon["keras"]["runs"] == []
    assert xeon["reference"]["accuracy_mean"] == pytest.approx(0.9172) and xeon["minutes_ratio"] is None
    text = tables.vs_airbench95({"vs-airbench95": {**summary, "provenance": {"date": "2026-12-07 12:00:00"}}})
    epyc_part, xeon_part = text.split("On another CPU, Intel(R) Xeon(R) Processor")
    assert "`vs-airbench95-reference-seed-5.json`" in epyc_part and "reference-seed-2" not in epyc_part
    assert "| airbench95's own code | 2 | 91.67% | 35.3 |" in xeon_part and "reference-seed-5" not in xeon_part
    assert "left out" not in text  # the Xeon's runs are shown in their own table, not listed as left out


def test_a_newer_configuration_on_one_cpu_does_not_empty_another_cpus_set():
    records = dict([run("keras", 1, 0.915, 45.0, date="2026-12-06 10:00:00"),
                    run("keras", 2, 0.917, 40.0, date="2026-12-07 10:00:00", cpu=EPYC,
                        configuration={"scratch": {"epochs": 15}})])
    [xeon] = vs_airbench.summarize(records)["other_cpus"]
    assert [row["seed"] for row in xeon["keras"]["runs"]] == [1]


def test_a_run_left_out_on_another_cpu_is_still_named_in_the_table():
    records = dict([run("keras", 1, 0.915, 45.0, date="2026-12-06 10:00:00", configuration={"scratch": {"epochs": 21}}),
                    run("keras", 2, 0.917, 40.0, date="2026-12-06 11:00:00"),
                    run("reference", 5, 0.916, 50.0, date="2026-12-07 11:00:00", cpu=EPYC)])
    summary = {**vs_airbench.summarize(records), "provenance": {"date": "2026-12-07 12:00:00"}}
    text = tables.vs_airbench95({"vs-airbench95": summary})
    assert "left out: `vs-airbench95-keras-seed-1.json`, another CPU" in text  # in no table: its set moved on
    assert "left out: `vs-airbench95-keras-seed-2.json`" not in text  # in the Xeon's own table


def test_two_generations_of_one_cpu_model_name_are_two_cpus():
    # Zen 4 and Zen 5 both read "AMD EPYC" in /proc/cpuinfo and ran these nets 2x apart: family and model number
    # keep their minutes apart, and results from before those were recorded get the family their VM boot had.
    zen4 = {"model": "AMD EPYC", "family": 25, "model_number": 17, "flags": ["avx2", "avx512f"], "cores": 2}
    zen5 = {**zen4, "family": 26, "model_number": 2}
    unrecorded = {key: zen4[key] for key in ("model", "flags", "cores")}
    records = dict([run("keras", 1, 0.9196, 99.0, date="2026-12-06 20:16:00", cpu=unrecorded),
                    run("reference", 5, 0.9158, 66.7, date="2026-12-06 23:11:00", cpu=unrecorded),
                    run("reference", 6, 0.9150, 69.0, date="2026-12-08 01:00:00", cpu=zen4),
                    run("reference", 7, 0.9160, 34.6, date="2026-12-09 01:00:00", cpu=zen5)])
    summary = vs_airbench.summarize(records)
    assert summary["cpu"] == "AMD EPYC (family 26, model 2; AVX-512), 2 cores"
    assert [row["seed"] for row in summary["reference"]["runs"]] == [7] and summary["keras"]["runs"] == []
    [other] = summary["other_cpus"]
    assert other["cpu"] == "AMD EPYC (family 25, model 17; AVX-512), 2 cores"
    assert [row["seed"] for row in other["reference"]["runs"]] == [5, 6]
    assert [row["seed"] for row in other["keras"]["runs"]] == [1]


def test_keras_runs_name_the_norm_layer_the_residual_net_uses():
    """A Keras run's configuration names the net's norm layer, so that runs of another layer are not combined."""
    from imgclf.training import scratch_model

    config = common.profile_params(common.ROOT / "profiles" / "scratch_residual.yaml").scratch
    model = scratch_model.build_residual_model(config, input_shape=(32, 32, 3), num_classes=10)
    norms = {type(layer).__name__ for layer in model.layers if "norm" in layer.name}
    assert norms == {vs_airbench.KERAS_NORM}
