"""Data modules. Every one yields the same batch structure (see ``mtlexp.data.base.Batch``)."""
