"""The one params loader: strict, typed, frozen, and its errors say what to fix."""

from __future__ import annotations

import re
import typing

import pydantic
import pytest
import yaml

from imgclf.config import ConfigError, Params, flatten, load_params, params_from_dict, params_to_dict
from imgclf.entry_points import PROJECT_ROOT


def test_project_params_load_and_match_the_write_up_recipe():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.scratch.learning_rate == 0.001
    assert params.scratch.epochs == 25
    assert params.scratch.batch_size == 64
    assert params.scratch.dropout == 0.2
    assert params.transfer.backbone == "resnet50" and params.transfer.weights == "imagenet"


def test_params_yaml_spells_out_every_field_with_a_comment():
    """Every knob is in params.yaml (no hidden defaults) and each line has a one-line comment."""
    text = (PROJECT_ROOT / "params.yaml").read_text()
    written = flatten(yaml.safe_load(text))
    expected = flatten(params_to_dict(Params()))
    assert set(written) == set(expected)
    for line in text.splitlines():
        is_leaf = line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":")
        if is_leaf:
            assert "#" in line, f"params.yaml line without a comment: {line!r}"


def test_config_is_frozen(params_dict):
    params = params_from_dict(params_dict)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.scratch.epochs = 3


def _write(tmp_path, mapping):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def test_unknown_key_names_the_key_the_allowed_keys_and_the_file(tmp_path, params_dict):
    params_dict["scratch"]["epohcs"] = 3
    path = _write(tmp_path, params_dict)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    message = str(error.value)
    assert str(path) in message and "scratch.epohcs" in message and "epochs" in message


def test_wrong_type_names_key_and_expected_type(tmp_path, params_dict):
    params_dict["scratch"]["epochs"] = "ten"
    with pytest.raises(ConfigError, match=r"scratch\.epochs: expected an integer, got 'ten'"):
        load_params(_write(tmp_path, params_dict))


def test_bool_is_not_an_integer(params_dict):
    params_dict["scratch"]["batch_size"] = True
    with pytest.raises(ConfigError, match=r"scratch\.batch_size"):
        params_from_dict(params_dict)


def test_out_of_range_value_says_what_is_allowed(params_dict):
    params_dict["data"]["val_fraction"] = 0.9
    with pytest.raises(ConfigError, match=r"data\.val_fraction: expected a value > 0.0 and <= 0.5, got 0.9"):
        params_from_dict(params_dict)


def test_unknown_choice_lists_the_choices(params_dict):
    params_dict["data"]["source"] = "cifar11"
    with pytest.raises(ConfigError, match=r"data\.source: expected one of 'cifar10', 'cifar100'"):
        params_from_dict(params_dict)


def test_image_folder_needs_a_path(params_dict):
    params_dict["data"]["source"] = "image_folder"
    with pytest.raises(ConfigError, match=r"data\.path: required"):
        params_from_dict(params_dict)


def test_pool_after_must_name_existing_blocks(params_dict):
    params_dict["scratch"]["pool_after"] = [5]
    with pytest.raises(ConfigError, match=r"scratch\.pool_after"):
        params_from_dict(params_dict)


def test_bad_checksum_format(params_dict):
    params_dict["data"]["sha256"] = "abc"
    with pytest.raises(ConfigError, match="64 hex"):
        params_from_dict(params_dict)


def test_integers_are_accepted_where_numbers_are_due(params_dict):
    params_dict["scratch"]["learning_rate"] = 1
    assert params_from_dict(params_dict).scratch.learning_rate == 1.0


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_flatten_gives_readable_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def _scalar_fields(cls: type[pydantic.BaseModel], prefix: str = "") -> dict[str, type]:
    """Every leaf field of the configuration with its declared scalar types (`int | None` -> {int, None},
    `list[Annotated[int, ...]]` -> {int})."""
    fields = {}
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            fields.update(_scalar_fields(annotation, f"{prefix}{name}."))
        else:
            arguments = typing.get_args(annotation)
            fields[f"{prefix}{name}"] = {typing.get_args(arg)[0] if typing.get_origin(arg) is typing.Annotated
                                         else arg for arg in arguments} or {annotation}
    return fields


def _set(mapping: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        mapping = mapping[parent]
    mapping[leaf] = value


def test_a_boolean_is_not_a_number_in_any_int_or_float_field(params_dict):
    numeric = [key for key, types in _scalar_fields(Params).items() if types & {int, float}]
    assert {"scratch.epochs", "scratch.learning_rate", "data.max_per_class", "seed"} <= set(numeric)
    for key in numeric:
        changed = yaml.safe_load(yaml.safe_dump(params_dict))
        _set(changed, key, True)
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: expected .*, got True"):
            params_from_dict(changed)


def test_numbers_parse_as_dvc_parses_them(tmp_path):
    """YAML 1.2, as DVC reads params.yaml: PyYAML (YAML 1.1) reads 3e-4 as a string and `yes` as a boolean."""
    from dvc.utils.serialize import parse_yaml

    from imgclf.config import read_params_yaml

    text = "a: 3e-4\nb: 1e3\nc: .5\nd: 1_000\ne: yes\nf: 0x1F\ng: 017\nh: on\n"
    path = tmp_path / "scalars.yaml"
    path.write_text(text)
    ours = read_params_yaml(path)
    assert ours == parse_yaml(text, str(path))
    assert ours["a"] == 3e-4 and isinstance(ours["a"], float) and ours["e"] == "yes"


def test_exponent_learning_rate_is_a_float_and_yes_is_not_a_boolean(tmp_path):
    text = (PROJECT_ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("learning_rate: 0.001 ", "learning_rate: 3e-4  ", 1))
    assert load_params(path).scratch.learning_rate == pytest.approx(3e-4)
    path.write_text(text.replace("enabled: false ", "enabled: yes   ", 1))
    with pytest.raises(ConfigError, match=r"augment\.enabled: expected true or false, got 'yes'"):
        load_params(path)
