"""Configuration: the dataclasses (`schema`), YAML and flags through tyro (`parse`),
what the hardware computes natively (`hardware`), and `ConfigError`.

Importing this package is light: `from sae.config import ConfigError` loads no torch and no
model code, so every stage can raise it.
"""

from sae.config.errors import ConfigError, first_line

__all__ = ["ConfigError", "first_line"]
