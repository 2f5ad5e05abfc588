"""Feature and task specs: what data, models, the Lightning module and reports say to each other.

Plain frozen data that imports nothing of mtlexp, so that every layer can use it. What a task's kind means
(loss, predictions, metrics, label checks) lives in ``mtlexp.kinds``; reading task specs from the config, in
``mtlexp.tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# num_classes of a multiclass task whose config leaves it out: the data module counts the classes.
INFER_CLASSES = 0

# Which way a metric improves, as metrics.json records it per task and metric: a larger value is better, a
# smaller one, or one nearer 0 (a bias). Declared by the metric objects (``mtlexp.metrics.direction``), read by
# the report; here because both sides share it and the report must not import torch.
MAX, MIN, ZERO = "max", "min", "zero"
DIRECTIONS = (MAX, MIN, ZERO)


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical input column: indices in ``[0, cardinality)``; index 0 is reserved for unseen/missing."""

    name: str
    cardinality: int
    embedding_dim: int


@dataclass(frozen=True)
class FeatureSpec:
    """The inputs of a data set as the model's input block sees them."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = field(default_factory=tuple)

    @property
    def num_numeric(self) -> int:
        return len(self.numeric)

    @property
    def input_dim(self) -> int:
        """Width of the concatenated input (numeric columns plus all embeddings)."""
        return self.num_numeric + sum(c.embedding_dim for c in self.categorical)


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    :param name: key of the task everywhere (model outputs, labels, metric names ``{split}/{name}/{metric}``).
    :param kind: the name of a task kind (``mtlexp.kinds.KINDS``), which decides what the task means.
    :param num_classes: classes of a multiclass task (1 output otherwise); ``INFER_CLASSES`` until the data
        module has counted them.
    :param column: source column of the label in a table (tabular data only).
    :param positive: for a binary task read from a column: the value(s) that count as positive.
    :param threshold: for a binary task read from a numeric column: label = column > threshold.
    :param standardize: a regression task trains on its label standardised with the training mean and sd
        (so a label in large units does not dominate the other tasks); metrics stay in the original units.
    :param label_shift, label_scale: that mean and sd, filled in by the data module (0 and 1 otherwise).
    :param observed_if: the label is observed only where this other (binary) task's label is 1: a conversion
        is only seen after a click. Losses and metrics of the task use only those rows.
    :param truth: the data knows every row's true propensity and potential outcome (a simulator), so the task
        also gets truth-based metrics (``kinds``); set by the data module.
    :param product: a derived binary task, the AND of these binary tasks' labels (``ctcvr`` = click AND
        conversion), predicted as the product of their probabilities; it has no label column and no tower.
    """

    name: str
    kind: str
    num_classes: int = 1
    column: str | None = None
    positive: tuple[str, ...] = field(default_factory=tuple)
    threshold: float | None = None
    standardize: bool = False
    label_shift: float = 0.0
    label_scale: float = 1.0
    observed_if: str | None = None
    product: tuple[str, ...] = field(default_factory=tuple)
    truth: bool = False

    @property
    def derived(self) -> bool:
        """Predicted from other tasks' outputs (``product``), not by a tower of its own."""
        return bool(self.product)
