"""Multi-task architectures, each a short composition of the building blocks in ``mtlexp.models.blocks``."""
