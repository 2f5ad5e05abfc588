"""What the model needs to know about the inputs: numeric width and categorical vocabularies."""

from __future__ import annotations

from dataclasses import dataclass, field


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
