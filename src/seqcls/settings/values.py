"""One value at a time: a raw string or JSON value parsed into its field's type, the structured settings (class
weights, label names, trackers), the run id rule, and SageMaker's hyperparameters.json decoded."""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any, Mapping

from ..errors import SettingsError
from .fields import FIELDS, REPORTERS, STRUCTURED, is_secret


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"hyperparameter {name}={raw!r}: expected true or false")


def parse_value(name: str, raw: Any) -> Any:
    """Parse one raw value (usually a string) into the field's type; error names the hyperparameter."""
    if name not in FIELDS:
        raise unknown_name(name)
    kind = FIELDS[name].type.removesuffix(" | str")  # "int | str": a number, or `auto` where the setting allows it
    if isinstance(raw, (dict, list)) and name in STRUCTURED:  # hyperparameters.json may hold the map as an object
        raw = json.dumps(raw, sort_keys=name == "class_weights")
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, (str, int, float)):
        text = str(raw).strip()
    else:
        raise SettingsError(f"hyperparameter {name}: expected a string or number, got {type(raw).__name__}")
    if FIELDS[name].metadata["auto"] and text.lower() == "auto":
        return "auto"
    try:
        if kind == "bool":
            return _parse_bool(name, text)
        if kind == "int":
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "float":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
    except ValueError:
        expected = ("an integer" if kind == "int" else "a number") + (" or auto" if FIELDS[name].metadata["auto"] else "")
        raise SettingsError(f"hyperparameter {name}={raw!r}: expected {expected}") from None
    return text


def unknown_name(name: str) -> SettingsError:
    close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; valid names: {', '.join(FIELDS)}"
    return SettingsError(f"unknown hyperparameter {name!r}{hint}")


def check_setting(condition: bool, name: str, value: Any, expectation: str) -> None:
    if not condition:
        raise SettingsError(f"hyperparameter {name}={value!r} is out of range: {expectation}")


RUN_ID_RULE = "may hold only ASCII letters, digits, '-', '_' and '.', and must not start with '.'"


def is_safe_run_id(run_id: str) -> bool:
    """A folder name on every store, printable as is: the run_id setting and a platform's job name alike."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", run_id)) and not run_id.startswith(".")


def class_weight_map(value: str) -> dict[str, float] | None:
    """class_weights as given: None for none/balanced, else the {label: weight} map, checked (positive, finite)."""
    if value in ("none", "balanced"):
        return None
    try:
        weights = json.loads(value)
    except ValueError:
        weights = None
    if not isinstance(weights, dict) or not weights:
        raise SettingsError(f"hyperparameter class_weights={value!r}: expected none, balanced or a JSON object of "
                            "label weights such as {\"0\": 1.0, \"1\": 2.5}")
    for label, weight in weights.items():
        number = weight if isinstance(weight, (int, float)) and not isinstance(weight, bool) else float("nan")
        check_setting(math.isfinite(number) and number > 0, "class_weights", value,
                      f"the weight of label {label!r} must be a positive number, got {json.dumps(weight)}")
    return {str(label): float(weight) for label, weight in weights.items()}


def label_name_map(value: str) -> list[str] | dict[str, str] | None:
    """label_names as given: None when empty, else the list (id order) or the {label: name} map, checked here
    (names non-empty and distinct); whether they fit the labels found is data's check, once train is read."""
    if not value:
        return None
    try:
        names = json.loads(value)
    except ValueError:
        names = None
    given = list(names.values()) if isinstance(names, dict) else names
    if not isinstance(given, list) or not given:
        raise SettingsError(f"hyperparameter label_names={value!r}: expected a JSON list of names in label id order, "
                            "such as [\"unacceptable\", \"acceptable\"], or a JSON object such as "
                            "{\"0\": \"unacceptable\", \"1\": \"acceptable\"}")
    for name in given:
        check_setting(isinstance(name, str) and bool(name.strip()), "label_names", value,
                      f"every name must be a non-empty string, got {json.dumps(name)}")
    stripped = [name.strip() for name in given]
    repeated = sorted({name for name in stripped if stripped.count(name) > 1})
    check_setting(not repeated, "label_names", value, f"names must be distinct; repeated: {', '.join(map(repr, repeated))}")
    return dict(zip(map(str, names), stripped)) if isinstance(names, dict) else stripped


def report_targets(value: str) -> tuple[str, ...]:
    """report_to as a tuple of trackers, in the order given; `none` (alone) is the empty tuple."""
    names = tuple(dict.fromkeys(name.strip().lower() for name in value.split(",") if name.strip()))
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in REPORTERS]
    check_setting(bool(names) and not unknown, "report_to", value,
                  f"must be none or a comma-separated list of {', '.join(REPORTERS)}"
                  + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return names


def _decode(value: Any) -> Any:
    """Decode a value as sagemaker-training-toolkit does (environment.read_hyperparameters: json.loads,
    else the raw string). SDK v2 estimators JSON-encode every value (`"\\"bf16\\""`), SDK v3 and boto3
    send plain strings (`"bf16"`). A decoded number or boolean keeps its text instead, which parses to
    the same value for typed settings and stays verbatim for text ones (run_id "1e3" is not 1000.0)."""
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, (str, list, dict)) or decoded is None else value


def load_hyperparameters_json(text: str, path: str) -> dict[str, Any]:
    """Parse SageMaker's hyperparameters.json: an object of string values, each JSON-decoded when it can be."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SettingsError(f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a JSON object of hyperparameters, got {type(data).__name__}")
    return {name: _decode(value) for name, value in data.items()}


def check_scalar_values(values: Mapping[str, Any], path: str) -> None:
    """Our hyperparameters are strings or numbers; a list, object or null is a mistake worth naming."""
    for name, value in values.items():
        if isinstance(value, STRUCTURED.get(name, ())):
            continue  # a setting given as JSON (an object or list in hyperparameters.json)
        if isinstance(value, (dict, list)) or value is None:
            kind = {dict: "an object", list: "a list"}.get(type(value), "null")
            shown = f"{kind} (value masked)" if is_secret(name) else json.dumps(value)[:80]
            raise SettingsError(f"{path}: hyperparameter {name} must be a string or number, got {shown}")
