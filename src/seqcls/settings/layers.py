"""The layered sources merged: defaults < hyperparameters.json < SEQCLS_<NAME> < --name value, every value parsed
and the whole validated, with where each value came from (`Resolved`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .checks import validate
from .fields import FIELDS, Settings, is_secret
from .values import parse_value


@dataclass(frozen=True)
class Resolved:
    settings: Settings
    sources: dict[str, str]  # hyperparameter name -> the source its value came from

    @property
    def explicit(self) -> frozenset[str]:
        """The settings a user gave (any source but the defaults): data leaves the others to the files' headers."""
        return frozenset(name for name, source in self.sources.items() if source != "default")

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Values with their sources, secrets masked: what the logs and the manifest record."""
        values = self.settings.as_dict()
        return {name: {"value": "***" if is_secret(name) and values[name] else values[name], "source": self.sources[name]}
                for name in values}


def resolve(layers: Iterable[tuple[str, Mapping[str, Any]]]) -> Resolved:
    """Merge raw sources given lowest precedence first, parse every value, validate the result."""
    values: dict[str, Any] = {}
    sources = {name: "default" for name in FIELDS}
    for source, raw_values in layers:
        for name, raw in raw_values.items():
            values[name] = parse_value(name, raw)
            sources[name] = source
    settings = Settings(**values)
    validate(settings)
    return Resolved(settings, sources)
