"""`make compare`: DVC experiments side by side in one 120-column screen.

`dvc exp show` has a column for every param, metric and dependency (over 200 here); this keeps each experiment's
state, the params whose values differ between the experiments shown and the headline metrics: both models' test
accuracy, transfer - scratch, and McNemar's p-value in scientific notation when small (DVC's own tables round 6e-21
to 0.0). Only a finished experiment has numbers: DVC gives a failed experiment the metrics files of the workspace it
was queued from, so its table shows another run's numbers beside the failed one's params.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import tabulate as tabulate_module
from tabulate import tabulate

from imgclf.artifacts import MODEL_NAMES, PARAMS_FILE
from imgclf.config import flatten
from imgclf.evaluation import metric_definitions
from imgclf.evaluation.metric_definitions import ANALYSIS_SUMMARY, EVALUATE_METRICS

HEADLINE_METRICS = metric_definitions.compare_columns(MODEL_NAMES)
# `dvc exp show --json` puts a queued, running or finished queue task's state in its `executor`; an experiment run
# in the workspace has no executor and is done. Only a done experiment's metrics are its own: a failed one carries
# the metrics files of the workspace it was queued from, a running one whatever its temporary copy holds so far.
STATES = {"success": "done", "failed": "failed", "queued": "queued", "running": "running"}
DONE = "done"
BASELINE_STATE = "-"  # the workspace and each commit: their numbers are the metrics files they hold
WIDTH = 120
MAX_VALUE_CHARS = 22  # a long value (a backbone file path) is cut, keeping its end
GAP = "  "  # between columns: tabulate's "simple" format
TEXT_COLUMNS = 2  # name and state read left to right; params and numbers are right-aligned


def file_data(state: dict[str, Any], section: str, path: str) -> dict[str, Any]:
    data = (state.get("data") or {}).get(section) or {}
    return flatten((data.get(path) or {}).get("data") or {})


def experiment_state(experiment: dict[str, Any]) -> str:
    """done, failed, queued or running (DVC's executor state, else failed when DVC reports an error)."""
    executor = experiment.get("executor") or {}
    if executor.get("state"):
        return STATES.get(executor["state"], executor["state"])
    return "failed" if experiment["revs"][0].get("error") else DONE


def rows_of(exp_show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per revision of `dvc exp show --json`: the workspace, each baseline commit and its experiments
    (newest first, as DVC lists them), each with its name, state, flat params and flat metrics. An experiment that
    is not done has no metrics: never the numbers DVC fills in from another revision."""
    rows = []

    def add(revision: dict[str, Any], name: str, state: str) -> None:
        has_numbers = state in (DONE, BASELINE_STATE)
        rows.append({"name": name, "state": state, "has_params": bool(revision.get("data")),
                     "params": file_data(revision, "params", PARAMS_FILE),
                     "metrics": {path: file_data(revision, "metrics", path) if has_numbers else {}
                                 for path in (EVALUATE_METRICS, ANALYSIS_SUMMARY)}})

    for baseline in exp_show:
        rev = baseline["rev"]
        if baseline.get("data"):  # a commit DVC could not read (its error is in `dvc exp show`) has nothing to show
            add(baseline, baseline.get("name") or (rev if rev == "workspace" else rev[:7]), BASELINE_STATE)
        for experiment in baseline.get("experiments") or []:
            tip = experiment["revs"][0]
            add(tip, experiment.get("name") or tip.get("name") or tip["rev"][:7], experiment_state(experiment))
    return rows


def shorten(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else "…" + text[-(MAX_VALUE_CHARS - 1):]


def render(columns: list[tuple[str, list[str]]]) -> str:
    """`columns` (title, cells) as tabulate's "simple" table: titles, a dashed line, the rows; each column as wide
    as its widest cell or title, two spaces apart."""
    titles = [title for title, _ in columns]
    rows = list(zip(*(cells for _, cells in columns), strict=True))
    aligns = ["left" if position < TEXT_COLUMNS else "right" for position in range(len(columns))]
    # tabulate widens every column by MIN_PADDING (2) beyond its title in all formats but "pretty"; the 120
    # columns here go to content, so no padding but the gap.
    padding, tabulate_module.MIN_PADDING = tabulate_module.MIN_PADDING, 0
    try:
        return tabulate(rows, headers=titles, tablefmt="simple", colalign=aligns, disable_numparse=True)
    finally:
        tabulate_module.MIN_PADDING = padding


def table(rows: list[dict[str, Any]], width: int = WIDTH) -> str:
    """Name, state, the params that differ, the headline metrics; params that do not fit in `width` are named
    below."""
    if not rows:
        return "no experiments to compare: run `dvc repro` or `dvc exp run` first"
    with_params = [row for row in rows if row["has_params"]]
    keys = sorted({key for row in with_params for key in row["params"]})
    differing = [key for key in keys if len({json.dumps(row["params"].get(key)) for row in with_params}) > 1]
    columns: list[tuple[str, list[str]]] = [("experiment", [shorten(row["name"]) for row in rows]),
                                            ("state", [row["state"] for row in rows])]
    metric_columns = [(title, [metric.format(row["metrics"][path].get(key)) for row in rows])
                      for title, path, key, metric in HEADLINE_METRICS]

    def render_width(candidate: list[tuple[str, list[str]]]) -> int:
        return max(len(line) for line in render(candidate).splitlines())

    left_out = []
    for key in differing:
        column = (key, [shorten(json.dumps(row["params"].get(key)).strip('"')) if row["has_params"] else ""
                        for row in rows])
        if render_width([*columns, column, *metric_columns]) <= width:
            columns.append(column)
        else:
            left_out.append(key)
    lines = [render([*columns, *metric_columns])]
    if left_out:
        lines.append(f"also differ (too wide to show): {', '.join(left_out)}")
    if not differing:
        lines.append("no params differ between these revisions")
    return "\n".join(lines)


def exp_show_json(extra: list[str]) -> list[dict[str, Any]]:
    result = subprocess.run(["dvc", "exp", "show", "--json", *extra], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"`dvc exp show --json` failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make compare", description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=WIDTH, help="characters per line (default %(default)s)")
    parser.add_argument("--from-json", type=Path, help="read saved `dvc exp show --json` output instead")
    arguments, dvc_args = parser.parse_known_args(argv)  # the rest goes to dvc exp show (-A, --rev, -n)
    exp_show = json.loads(arguments.from_json.read_text()) if arguments.from_json else exp_show_json(dvc_args)
    print(table(rows_of(exp_show), width=arguments.width))


if __name__ == "__main__":
    main(sys.argv[1:])
