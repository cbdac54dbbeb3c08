"""Errors caused by input a user can fix. Each message says what is wrong and what to do.

Kept free of heavy imports so every stage can catch them without loading TensorFlow.
"""


class UserError(ValueError):
    """Bad input (params, data, model files): shown as one line, without a traceback."""


class ConfigError(UserError):
    """A params file that does not describe a valid configuration."""


class DataSourceError(UserError):
    """A data source that cannot be fetched or read."""


class FolderTooDeepError(DataSourceError):
    """A folder tree nested deeper than any data set (fileio.MAX_FOLDER_DEPTH): refused before it is read."""


class UnsafeArchiveError(DataSourceError):
    """An archive member that would land outside the extraction directory; the message names it."""


class PreprocessError(UserError):
    """Raw data that cannot become a usable data set."""


class ModelConfigError(UserError):
    """A model setting that cannot work with this data or this Keras."""


class ModelSourceError(UserError):
    """A model path or URI that cannot be loaded as an imgclf classifier; the message says what to do."""


class ModelFileError(UserError):
    """A `.keras` file (model, backbone, feature extractor) that Keras cannot read: corrupt, truncated or unsafe."""


class TrackingStoreError(UserError):
    """An MLflow tracking store that cannot be read or written (corrupt, read-only, locked), or lacks a run it
    was pointed at (MLFLOW_RUN_ID)."""


class RegistryError(UserError):
    """A model the MLflow registry cannot register, or an alias (`champion`) no registered model holds."""


class EvaluationError(UserError):
    """A model or prediction file that does not fit the data."""


class CorruptFileError(UserError):
    """A JSON file an earlier stage wrote (or a user gave) that cannot be parsed; the message names it."""


class UnwritableOutputError(UserError):
    """An output that cannot be written (a read-only folder or file system): refused before any work."""
