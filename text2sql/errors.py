"""The exception tree. The CLI turns any Text2SQLError into one line on stderr and exit code 1."""


class Text2SQLError(Exception):
    """Base of every error this tool reports to a user."""


class ConfigError(Text2SQLError):
    """text2sql.yaml is malformed, has unknown keys or wrong types."""


class CatalogError(Text2SQLError):
    """An Iceberg catalog cannot be loaded or reached."""


class NoSuchTableError(CatalogError):
    """A namespace or table does not exist in the catalog or the schema snapshot."""


class SchemaSnapshotError(Text2SQLError):
    """schemas/ is missing, stale or inconsistent with itself."""


class DataError(Text2SQLError):
    """A dataset file or record is malformed."""


class UnsafeSQLError(Text2SQLError):
    """SQL is not exactly one read-only query."""


class ModelError(Text2SQLError):
    """A base model, run dir or checkpoint is missing or unusable."""


class MissingDependencyError(Text2SQLError):
    """An optional package is not installed; the message gives the pip command."""


TRAIN_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")
"""What `train` imports (the `[train]` extra, less the optional bitsandbytes)."""
MODEL_PACKAGES = ("torch", "transformers")
"""What loading a model for generation needs (`predict`, `serve --model`); adapters need peft as well."""


def require(module: str, extra: str):
    """Import an optional module or raise a MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(_not_installed(module, extra)) from exc


def require_all(modules: tuple[str, ...], extra: str) -> None:
    """Raise a MissingDependencyError for the first of `modules` that is not installed, importing none of them:
    a command says what is missing before it spends seconds importing torch."""
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing; a module set to None in sys.modules
            found = False
        if not found:
            raise MissingDependencyError(_not_installed(module, extra))


def _not_installed(module: str, extra: str) -> str:
    return f"'{module}' is not installed: pip install 'text2sql[{extra}]'"
