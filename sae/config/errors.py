"""The one exception every stage raises for a bad value: light, so raising it imports nothing."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one sentence naming value and what is valid."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    one-line error that wraps it."""
    return (str(e).splitlines() or [type(e).__name__])[0]
