"""dvc.yaml's deps and params cannot drift from the code: each stage lists exactly what it imports and reads.

A stage whose deps miss a module it imports keeps a stale result after that module changes; one that lists a
module it never imports reruns for nothing. Both directions fail here, computed from the code itself.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from imgclf import artifacts, config, stage_runner
from imgclf.entry_points import PROJECT_ROOT

STAGES = yaml.safe_load((PROJECT_ROOT / artifacts.DVC_FILE).read_text(encoding="utf-8"))["stages"]
PACKAGES = ("imgclf", "stages")  # the project's own code; everything else is a pinned dependency
MODULE_COMMAND = re.compile(r"^python -m ([\w.]+)")


def module_file(module: str) -> Path | None:
    """The file of a project module (a package's __init__.py), or None for a third-party one."""
    if module.split(".")[0] not in PACKAGES:
        return None
    path = PROJECT_ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (function-level imports included), and their packages."""
    module = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    return {".".join(name.split(".")[:end]) for name in found for end in range(1, name.count(".") + 2)}


def import_closure(module: str) -> set[Path]:
    """The project files Python runs for `python -m module`: the module, its packages, what they import."""
    root = module_file(module) or module_file(f"{module}.__main__")
    pending = [root, *(module_file(".".join(module.split(".")[:end])) for end in range(1, module.count(".") + 1))]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        pending += [module_file(name) for name in imported_modules(path)]
    return seen


def package_data() -> set[Path]:
    """The files pyproject's [tool.setuptools.package-data] ships with the code (templates the code loads)."""
    globs = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    return {path for package, patterns in globs.get("package-data", {}).items() for pattern in patterns
            for path in PROJECT_ROOT.joinpath(*package.split(".")).glob(pattern) if path.is_file()}


PACKAGE_DATA = package_data()


def data_files_read(path: Path) -> set[Path]:
    """The package data files a module names in a string (`TEMPLATE = "report.html.j2"`): what it reads at run
    time, a dependency as real as an import."""
    strings = {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return {data for data in PACKAGE_DATA if data.name in strings and data.is_relative_to(path.parent)}


def code_closure(module: str) -> set[Path]:
    """The import closure and the package data its modules read."""
    modules = import_closure(module)
    return modules | {data for path in modules for data in data_files_read(path)}


def code_stages() -> list[tuple[str, str]]:
    """(stage, module) for every stage whose command runs project code with `python -m`."""
    found = []
    for name, stage in STAGES.items():
        match = MODULE_COMMAND.match(" ".join(stage["cmd"].split()))
        if match and module_file(match.group(1).split(".")[0]):
            found.append((name, match.group(1)))
    return found


def code_deps(stage: dict) -> set[Path]:
    """The stage's deps inside the project's code packages (data and model deps are another matter)."""
    deps = set()
    for dep in stage.get("deps", []):
        path = PROJECT_ROOT / dep
        if dep.split("/")[0] in PACKAGES:
            deps |= ({*path.rglob("*.py"), *(data for data in PACKAGE_DATA if data.is_relative_to(path))}
                     if path.is_dir() else {path})
    return deps


@pytest.mark.parametrize(("stage", "module"), code_stages(), ids=[name for name, _ in code_stages()])
def test_stage_code_deps_are_exactly_its_import_closure(stage, module):
    used = code_closure(module)
    listed = code_deps(STAGES[stage])
    relative = lambda paths: sorted(str(path.relative_to(PROJECT_ROOT)) for path in paths)  # noqa: E731
    assert not used - listed, f"dvc.yaml stage {stage} misses (stale results): {relative(used - listed)}"
    assert not listed - used, f"dvc.yaml stage {stage} lists what it never imports (needless reruns): " \
                              f"{relative(listed - used)}"


def declared_params(module: str) -> list[str] | None:
    """The stage module's `PARAMS` declaration (the keys it reads; stage_runner checks them against params.yaml)."""
    path = module_file(module)
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") == "PARAMS" for target in node.targets):
            # `(stage_runner.EVERY_PARAM,)`: the stage reads the whole file; anything else is a tuple of literal keys.
            return [stage_runner.EVERY_PARAM if isinstance(item, ast.Attribute) and item.attr == "EVERY_PARAM"
                    else ast.literal_eval(item) for item in node.value.elts]
    return None


STAGE_MODULES = [(name, module) for name, module in code_stages() if module.startswith("stages.")]


@pytest.mark.parametrize(("stage", "module"), STAGE_MODULES, ids=[name for name, _ in STAGE_MODULES])
def test_stage_params_are_its_declared_params(stage, module):
    declared = declared_params(module)
    assert declared is not None, f"{module_file(module)} declares no PARAMS (the params keys its stage reads)"
    listed = STAGES[stage].get("params", [])
    if declared == [stage_runner.EVERY_PARAM]:  # the whole file: dvc.yaml says `- params.yaml:`
        assert listed == [{artifacts.PARAMS_FILE: None}], f"dvc.yaml stage {stage} must track all of params.yaml"
        return
    assert sorted(listed) == sorted(declared), (
        f"dvc.yaml stage {stage} params {sorted(listed)} differ from PARAMS in {module}: {sorted(declared)}")


def test_package_data_is_shipped_and_counts_as_the_code_that_reads_it():
    # Every non-Python file in the code packages is package data (a non-editable install has it) ...
    files = {path for package in PACKAGES for path in (PROJECT_ROOT / package).rglob("*")
             if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts}
    assert files <= PACKAGE_DATA, f"not in pyproject's package-data: {sorted(map(str, files - PACKAGE_DATA))}"
    # ... and the stage whose code reads it reruns when it changes.
    template = PROJECT_ROOT / "imgclf/evaluation/templates/report.html.j2"
    assert template in PACKAGE_DATA and template in code_closure("stages.analyze")
    assert template not in code_closure("stages.evaluate")


def test_the_closure_follows_from_imports_and_package_inits():
    closure = {str(path.relative_to(PROJECT_ROOT)) for path in import_closure("stages.download")}
    assert {"stages/__init__.py", "stages/download.py", "imgclf/__init__.py", "imgclf/data/__init__.py",
            "imgclf/data/sources.py", "imgclf/stage_runner.py", "imgclf/config.py"} <= closure
    assert "imgclf/training/scratch_model.py" not in closure


def param_keys(declared: list[str]) -> set[str]:
    """`section` -> every `section.key` of it; `section.key` and top-level scalars as they are."""
    known = config.params_to_dict(config.Params())
    keys = set()
    for key in declared:
        value = known.get(key)
        keys |= {f"{key}.{field}" for field in value} if isinstance(value, dict) else {key}
    return keys


# Keys a stage reads only under settings the smoke run (smoke_copy.SMOKE_OVERRIDES) does not use: the trace of that
# run cannot show them read. Each entry says when the code reads it; any other declared key left unread fails.
READ_ONLY_WHEN = {
    "data.test_fraction": "the source has no official test split",
    "preprocess.small_class_policy": "a class has fewer than preprocess.min_images_per_class images",
    **{f"augment.{key}": "augment.enabled (train_transfer: when fine-tuning)"
       for key in ("enabled", "flip", "translate", "interpolation", "rotate", "zoom", "contrast")},
    "transfer.augment_copies": "augment.enabled",
    **{f"{model}.{key}": "early_stopping, lr_schedule step/plateau, optimizer sgd"
       for model in ("scratch", "transfer")
       for key in ("early_stopping_patience", "early_stopping_min_delta", "restore_best_weights", "lr_step_epochs",
                   "lr_decay_factor", "lr_plateau_patience", "momentum", "nesterov")},
    **{f"scratch.{key}": "scratch.architecture residual"
       for key in ("residual_widths", "residual_activation", "residual_head_scale",
                   "residual_bias_lr_scale")},
    **{key: "transfer.finetune_epochs > 0" for key in ("training.distribute", "transfer.finetune_layers",
                                                       "transfer.finetune_learning_rate")},
    **{key: "training.distribute multi_worker (tests/pipeline/test_distributed.py)"
       for key in ("training.workers", "training.coordinator")},
}


@pytest.mark.integration
@pytest.mark.slow
def test_each_stage_reads_exactly_its_declared_params(params_trace):
    # Reading an undeclared key already fails the stage (config.DeclaredParams); this finds declared keys that the
    # real pipeline run never read: dvc.yaml would rerun the stage when they change, for nothing.
    runs = [json.loads(line) for line in params_trace.read_text(encoding="utf-8").splitlines()]
    assert {run["stage"] for run in runs} == {name for name, _ in STAGE_MODULES}
    problems = []
    for run in runs:
        if run["declared"] == [stage_runner.EVERY_PARAM]:
            continue  # check_params validates the whole file: that is its job, not a read to account for
        declared, read = param_keys(run["declared"]), set(run["read"])
        if read - declared:
            problems.append(f"{run['stage']} read undeclared params {sorted(read - declared)}")
        if declared - read - READ_ONLY_WHEN.keys():
            problems.append(f"{run['stage']} declares params it never reads (needless reruns): "
                            f"{sorted(declared - read - READ_ONLY_WHEN.keys())}")
    assert not problems, "; ".join(problems)


def test_a_stage_cannot_read_a_params_key_it_does_not_declare():
    params = config.DeclaredParams(config.Params(), stage="download", declared=frozenset({"seed", "data.source"}),
                                   reads=(reads := set()))
    assert (params.seed, params.data.source) == (42, "cifar10")
    assert reads == {"seed", "data.source"}
    with pytest.raises(config.UndeclaredParamError, match=r"download reads params key 'data.path'.*add it to PARAMS"):
        params.data.path  # noqa: B018
    assert config.whole(params).data.path is None  # lineage logging sees everything, and is not recorded as read
    assert reads == {"seed", "data.source"}


def test_feature_extraction_does_not_rerun_when_training_code_changes():
    # The cached features are the slowest output to rebuild: an edit to the fitting loop, the shared training
    # toolkit or MLflow tracking must not invalidate them.
    closure = {str(path.relative_to(PROJECT_ROOT)) for path in import_closure("stages.extract_features")}
    assert not closure & {"imgclf/training/fitting.py", "imgclf/training/recipe.py", "imgclf/training/transfer.py",
                          "imgclf/training/scratch.py", "imgclf/training/scratch_model.py",
                          "imgclf/training/backbones.py"}
    assert not any(path.startswith("imgclf/tracking/") for path in closure)


def test_the_trainers_never_import_figures_packaging_registry_or_the_report():
    # Cosmetic and packaging edits rerun evaluate or analyze, never a training (tests/pipeline/test_reruns.py shows
    # it with DVC).
    for stage in ("stages.train_scratch", "stages.train_transfer", "stages.extract_features"):
        closure = {str(path.relative_to(PROJECT_ROOT)) for path in import_closure(stage)}
        assert not closure & {"imgclf/figures.py", "imgclf/tracking/packaging.py", "imgclf/tracking/registry.py",
                              "imgclf/evaluation/report.py", "imgclf/training/backbones.py"}, stage
