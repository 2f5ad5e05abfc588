"""mtlexp's Optuna sweeper for Hydra (hydra/sweeper=optuna)."""
