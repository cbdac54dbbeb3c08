"""BENCHMARKS.md's tables are what bench/results gives (`python -m bench.tables` changes nothing), and every
result a bench script writes carries its provenance (bench/provenance.py)."""

from __future__ import annotations

import copy
import json
import re

import pytest

from bench import provenance, tables

pytestmark = pytest.mark.duration(seconds=1)  # about, under make test: orders the modules

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 8
flags\t\t: fpu sse2 fma avx avx2 avx512f avx512_bf16 avx512vl amx_tile amx_bf16 avx_vnni
"""


def test_regenerating_the_tables_changes_nothing():
    text = tables.DOCUMENT.read_text(encoding="utf-8")
    assert tables.render(text, tables.load()) == text, "run `python -m bench.tables` and commit BENCHMARKS.md"


def test_every_table_region_is_known_and_every_table_is_used():
    text = tables.DOCUMENT.read_text(encoding="utf-8")
    used = {match["name"] for match in tables.REGION.finditer(text)}
    assert used == set(tables.TABLES)


def test_every_image_the_document_shows_exists():
    text = tables.DOCUMENT.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images, "the accuracy-against-time plots are gone from BENCHMARKS.md"
    assert [image for image in images if not (tables.ROOT / image).is_file()] == []


def test_a_changed_result_changes_its_table():
    results = tables.load()
    text = tables.DOCUMENT.read_text(encoding="utf-8")
    changed = copy.deepcopy(results)
    changed["determinism"]["on"]["test_accuracy"] = 0.123456
    rendered = tables.render(text, changed)
    assert rendered != text
    assert "12.35%" in rendered


def test_an_unknown_region_is_an_error():
    with pytest.raises(KeyError, match="no-such-table"):
        tables.render("<!-- table: no-such-table -->\n<!-- /table -->\n", {})


def test_a_result_without_provenance_is_marked_and_names_no_cpu():
    legacy = {"benchmark": "x", "machine": "x86_64, 2 cores", "date": "2026-11-25 01:46"}
    assert tables.machine(legacy) == f"provenance incomplete (recorded before {tables.PROVENANCE_SINCE})"
    assert tables.command(legacy) is None


def test_cpu_keeps_the_model_and_the_flags_that_decide_speed():
    cpu = provenance.cpu(CPUINFO)
    assert cpu["model"] == "Intel(R) Xeon(R) Processor"
    assert (cpu["family"], cpu["model_number"], cpu["stepping"]) == (6, 143, 8)  # "model" is not "model name"
    assert cpu["flags"] == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "avx512vl"]
    assert cpu["cores"] >= 1
    assert provenance.cpu_name({"cpu": cpu, "date": "2026-12-06 21:00:00"}) == (
        "Intel(R) Xeon(R) Processor (family 6, model 143; AMX)")


def test_a_cpu_without_a_recorded_family_is_named_by_its_boot_only_inside_that_boot():
    epyc = {"model": "AMD EPYC", "flags": ["avx2", "avx512f"], "cores": 2}
    assert provenance.cpu_name({"cpu": epyc, "date": "2026-12-07 07:41:06"}) == (
        "AMD EPYC (family 25, model 17; AVX-512)")
    assert provenance.cpu_name({"cpu": epyc, "date": "2026-12-05 12:39:00"}) == "AMD EPYC (AVX-512)"  # family 26 then
    xeon = {"model": "Intel(R) Xeon(R) Processor", "flags": ["amx_bf16"], "cores": 2}
    assert provenance.cpu_name({"cpu": xeon, "date": "2026-12-07 07:41:06"}) == "Intel(R) Xeon(R) Processor (AMX)"


def test_written_result_carries_provenance_and_is_labelled_contended_under_load(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_load_average", lambda: (3.5, 2.0, 1.0))
    run = provenance.start()
    path = tmp_path / "result.json"
    provenance.write(path, {"benchmark": "demo", "test_accuracy": 0.5}, run, argv=["demo.py", "--seed", "43"])
    record = json.loads(path.read_text())
    block = record["provenance"]
    assert record["test_accuracy"] == 0.5
    assert set(block) >= {"command", "date", "git", "versions", "cpu", "load_average", "contended", "host_gflops"}
    assert all(value > 0 for value in block["host_gflops"].values())
    assert block["command"].endswith("--seed 43")
    assert block["versions"]["python"] and "tensorflow" in block["versions"] and "keras" in block["versions"]
    assert block["load_average"] == {"before": [3.5, 2.0, 1.0], "after": [3.5, 2.0, 1.0]}
    assert block["contended"] is True
    assert tables.machine(record).endswith("contended: load 3.5 before, 3.5 after, other processes "
                                           f"{block['other_processes_cpu_share']:.0%} of the CPU")


def test_an_idle_run_is_not_contended(monkeypatch):
    monkeypatch.setattr(provenance, "_load_average", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(provenance, "_busy_ticks", lambda: None)  # no other processes' time to measure
    assert provenance.collect(provenance.start())["contended"] is False


def test_the_fine_tuning_seeds_table_gives_each_recipe_its_mean_and_spread():
    def run(seed: int, accuracy: float, minutes: float, *, peer: bool) -> dict:
        record = {"seed": seed, "test_accuracy": accuracy - 0.01 if peer else accuracy, "tta_flip": not peer,
                  "extract_stage_seconds": 0.0, "transfer_stage_seconds": minutes * 60,
                  "date": "2026-12-06 12:00"}
        return {**record, "test_accuracy_tta_flip": accuracy} if peer else record

    results = {"transfer-finetune-seed-1": run(1, 0.92, 90.0, peer=False),
               "transfer-finetune-seed-2": run(2, 0.93, 92.0, peer=False),
               "transfer-peer-keras-io-seed-1": run(1, 0.85, 40.0, peer=True)}
    text = tables.finetune_peer(results)
    assert "**profiles/transfer_finetune.yaml: mean ± sd over 2**" in text
    assert "**92.50%** ± 0.71%" in text and "**91.0 min** ± 1.4" in text
    assert "85.00% (no TTA, as the recipe scores: 84.00%)" in text
    assert tables.finetune_peer({}) == "No run yet.\n"
