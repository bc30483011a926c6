"""sae: train sparse-autoencoder dictionaries on Hugging Face model activations, then measure them."""

__version__ = "0.1.0"

from sae.io import load

__all__ = ["load"]
