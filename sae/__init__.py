"""sae: train sparse-autoencoder dictionaries on Hugging Face model activations, then measure them."""

__version__ = "0.1.0"

__all__ = ["load"]


def __getattr__(name: str):
    # `sae.load` is imported on first use, so that light modules (`sae.config.errors`, `sae.dist`)
    # can be imported without loading torch and the loaders.
    if name == "load":
        from sae.io import load

        return load
    raise AttributeError(f"module 'sae' has no attribute {name!r}")
