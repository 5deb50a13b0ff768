"""Optional capabilities: what lies beyond the core install is a pip extra (pyproject.toml), and a command that needs
a missing one fails at its start with the line that installs it, never with a bare ModuleNotFoundError mid-run."""

from __future__ import annotations

import importlib.util

from .errors import SettingsError

# The module a capability imports, and the extra that installs it (the image installs every one).
EXTRAS = {"boto3": "sagemaker", "google.cloud.storage": "vertex", "google.cloud.bigquery": "vertex",
          "google.cloud.aiplatform": "vertex", "fastapi": "serve", "uvicorn": "serve", "mlflow": "trackers"}


def installed(module: str) -> bool:
    """Whether `module` can be imported; a missing parent package (no `google` at all) is missing too."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def install_hint(module: str) -> str:
    return f"pip install 'seqcls[{EXTRAS[module]}]' (the image has it)"


def require(module: str, purpose: str) -> None:
    """Raise a SettingsError (exit 2) naming the extra when `purpose` needs a module that is not installed."""
    if not installed(module):
        raise SettingsError(f"{purpose} needs {module}, which is not installed: {install_hint(module)}")
