"""mtlexp: a config-driven experiment CLI for multi-task learning."""

__version__ = "0.1.0"
