"""Hyperparameters: the tutorial recipe as defaults, layered sources, typed parsing, validation.

Sources, lowest to highest precedence: built-in defaults < hyperparameters.json (SageMaker writes every value as a
JSON string) < env SEQCLS_<NAME> < command-line `--name value`. runtime/ collects the raw sources; this package only
parses and validates, so it never reads os.environ. One module per concern: `fields` (the settings and their help),
`values` (one value parsed), `checks` (the settings checked together) and `layers` (the sources merged).
"""

from .fields import (
    Bounds,
    DEFAULT_MODEL,
    FIELDS,
    FRACTION_FROM_ZERO,
    FRACTION_OPEN,
    NON_NEGATIVE,
    ONNX_MODULES,
    OPERATIONAL,
    Optimizer,
    POLYNOMIAL_LR_END,
    POSITIVE_INT,
    Promotion,
    REPORTERS,
    Reading,
    SCHEDULERS,
    SECRET_MARKERS,
    STRUCTURED,
    Settings,
    allowed_values,
    help_lines,
    is_secret,
    markdown_table,
)
from .values import (
    RUN_ID_RULE,
    check_scalar_values,
    check_setting,
    class_weight_map,
    is_safe_run_id,
    label_name_map,
    load_hyperparameters_json,
    parse_value,
    report_targets,
    unknown_name,
)
from .checks import validate
from .layers import Resolved, resolve

__all__ = [
    "Bounds",
    "DEFAULT_MODEL",
    "FIELDS",
    "FRACTION_FROM_ZERO",
    "FRACTION_OPEN",
    "NON_NEGATIVE",
    "ONNX_MODULES",
    "OPERATIONAL",
    "Optimizer",
    "POLYNOMIAL_LR_END",
    "POSITIVE_INT",
    "Promotion",
    "REPORTERS",
    "Reading",
    "RUN_ID_RULE",
    "Resolved",
    "SCHEDULERS",
    "SECRET_MARKERS",
    "STRUCTURED",
    "Settings",
    "allowed_values",
    "check_scalar_values",
    "check_setting",
    "class_weight_map",
    "help_lines",
    "is_safe_run_id",
    "is_secret",
    "label_name_map",
    "load_hyperparameters_json",
    "markdown_table",
    "parse_value",
    "report_targets",
    "resolve",
    "unknown_name",
    "validate",
]
