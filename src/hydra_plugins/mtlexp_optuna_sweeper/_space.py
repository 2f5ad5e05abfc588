"""The search space: Hydra's override grammar, parsed by Hydra's own parser, as Optuna distributions.

The mapping is the official plugin's: ``choice(...)`` (and ``a,b``, ``shuffle(range(...))``) is categorical,
``range(a, b, step)`` an int or float distribution from ``a`` to ``b`` with that step (``b`` included when the
steps reach it, as Optuna's ``high``), ``interval(a, b)`` a float (``int(interval(...))`` an int) distribution,
log-scaled under ``tag(log, ...)``. A plain value is a fixed parameter of every trial.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer

from mtlexp.errors import MtlexpError


def search_space(params: dict[str, Any] | None, arguments: Iterable[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(distributions, fixed)`` by override key: ``hydra.sweeper.params`` first, then the command line's
    overrides, which replace a parameter of the same key (a plain value fixes it, a sweep redefines it)."""
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as error:
            raise MtlexpError(f"hydra.sweeper.params: {line!r} is not Hydra's override grammar: "
                              f"{str(error).splitlines()[0]}") from None
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = override.get_value_element_as_str()
            continue
        try:
            space[key] = distribution(override)
        except (ValueError, HydraException) as error:  # Optuna's bounds check (low > high, log from 0), glob()
            detail = str(error).splitlines()[0].rstrip(".")
            raise MtlexpError(f"hydra.sweeper.params.{key}: {detail}, in {line!r}") from None
    return space, fixed


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        # Optuna stores only scalars: a list or dict choice ([16]) is kept as its override text, and so are
        # strings, so that every choice goes back onto the command line as it was written.
        choices = override.sweep_iterator(transformer=Transformer.identity)
        return CategoricalDistribution([as_choice(x) for x in choices])
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0 or start is None or stop is None or stop < start:
            raise MtlexpError(f"hydra.sweeper.params.{key}: expected range(start, stop, step) with start <= stop and "
                              f"a positive step, got {override.input_line!r}")
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(start, start + (stop - start) // step * step, step=step)
        # Optuna would itself trim a stop the steps do not reach, with a warning on every trial.
        return FloatDistribution(start, start + int((stop - start) / step + 1e-9) * step, step=step)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise MtlexpError(f"hydra.sweeper.params.{key}: expected choice(...), range(...) or interval(...) (optionally "
                      f"under tag(log, ...) or int(...)), got {override.input_line!r}")


def as_choice(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float)) or value is None else Transformer.str(value)


def override_text(value: Any) -> str:
    """A trial's parameter value as an override's value: categorical choices are override text already."""
    return value if isinstance(value, str) else Transformer.str(value)
