"""What every submitter shares: hyperparameters checked against the job's own parser, and errors.

A typo in a hyperparameter must fail here, in a second, not an hour later on a GPU host; and every
value must be sent as the string the job parses back to the same value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from seqcls import runtime
from seqcls import settings
from seqcls.errors import SettingsError

EXIT_USAGE = 2


class SubmitError(Exception):
    """A bad submission option; the message says what to change."""


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`; a missing `=` or a repeated name is an error."""
    values: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq or not name:
            raise SubmitError(f"{option} {pair!r}: expected NAME=VALUE")
        if name in values:
            raise SubmitError(f"{option} {name} is given twice")
        values[name] = value
    return values


def to_job_string(value: Any) -> str:
    """The string the job parses back to `value`: bools as true/false, floats by repr (2e-05)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def job_hyperparameters(raw: Mapping[str, str]) -> dict[str, str]:
    """Validate names, types and ranges with seqcls.settings, then normalise every value to a string."""
    try:
        resolved = settings.resolve([("submit", raw)])
    except SettingsError as err:
        raise SubmitError(str(err)) from None
    values = resolved.settings.as_dict()
    return {name: to_job_string(values[name]) for name in raw}


def check_environment(env: Mapping[str, str]) -> dict[str, str]:
    """SEQCLS_<NAME> variables are hyperparameters to the job: check those names too."""
    for key in env:
        try:
            name = runtime.hyperparameter_name(key)
        except SettingsError as err:
            raise SubmitError(f"--env {key}: {err}") from None
        if name:
            job_hyperparameters({name: env[key]})
    return dict(env)


def run_cli(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Turn a SubmitError into one line on stderr and exit status 2 (no traceback for a usage error)."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except SubmitError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
