"""Loss weighting and gradient aggregation: how per-task losses become one update."""
