"""The one error type users see: a single line naming the bad key, file or column."""

from __future__ import annotations

from collections.abc import Iterable


class MtlexpError(Exception):
    """A problem with the user's input (config, data, checkpoint), reported as one line.

    Anything raised as ``MtlexpError`` reaches the user as ``mtlexp: error: <message>`` with no traceback.
    """


class ConfigValueError(MtlexpError):
    """A constructor argument out of range; ``field`` is the argument's name.

    Constructors raise it without knowing where they sit in the config tree; the instantiation helper
    prefixes the config path (``model.num_experts``), so the message names the key the user typed.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownMetric(MtlexpError):
    """``optimized_metric`` names a metric the run does not have (``hparams_search``): it stops a sweep at its
    first job, whether the run finds out after training or at its first report to a pruning study."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        super().__init__(f"optimized_metric: no metric {name!r} in this run; available: {', '.join(available)}")


def require(condition: bool, field: str, expected: str, got: object) -> None:
    """Raise ``ConfigValueError`` unless ``condition`` holds: ``<field>: expected <expected>, got <got>``."""
    if not condition:
        raise ConfigValueError(field, f"expected {expected}, got {got!r}")


def first_line(error: BaseException) -> str:
    """An exception's message as one line for an error that names the key (its class name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
