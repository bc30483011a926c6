"""sae: train sparse-autoencoder dictionaries on Hugging Face model activations, then measure them.

The Python API (README.md, "Python"): `sae.load` opens an SAE folder; `sae.train(sae.TrainConfig(...))`
trains as `sae train` does and returns the final SAE folders; `sae.SAEConfig` is the SAE section.
"""

__version__ = "0.1.0"

__all__ = ["SAEConfig", "TrainConfig", "load", "train"]

_LAZY = {
    "load": ("sae.io", "load"),
    "train": ("sae.training.train", "train"),
    "TrainConfig": ("sae.config.schema", "TrainConfig"),
    "SAEConfig": ("sae.model.sae", "SAEConfig"),
}


def __getattr__(name: str):
    # Imported on first use, so that `import sae` and light modules (`sae.config.errors`,
    # `sae.dist`) load no torch, no model code and no loaders.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sae' has no attribute {name!r}")
