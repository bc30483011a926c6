"""The one exception every stage raises for a bad value: light, so raising it imports nothing."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one sentence naming value and what is valid."""
