"""Several seeds of one configuration trained as one vectorised run (``stack=K``)."""
