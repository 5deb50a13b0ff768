"""Error classes that carry attribution, so the failure file says whose fault it is."""


class SeqclsError(Exception):
    """Base class: the message is written verbatim to the failure file."""

    kind = "internal"


class UserError(SeqclsError):
    """Bad input from the user: hyperparameters, data, model folder. Fix the input and rerun."""

    kind = "user"


class SettingsError(UserError):
    """A hyperparameter is unknown, mistyped or out of range."""


class DataError(UserError):
    """A data channel is missing, unreadable or inconsistent."""


class ModelError(UserError):
    """The model folder or name cannot be used (missing weights, unsafe format, too short)."""


class SetupError(UserError):
    """The container's surroundings cannot run the job (an output folder it cannot write, a GPU it cannot use)."""


class StorageError(SeqclsError):
    """Publishing or reading artifacts in object storage failed."""

    kind = "storage"


class Interrupted(SeqclsError):
    """The platform asked the job to stop (SIGTERM); a retry may resume it."""

    kind = "interrupted"


class DeviceError(SetupError):
    """The container was given a GPU that CUDA cannot use (driver too old, CPU-only PyTorch): fix the host
    or ask for device=cpu."""
