"""The one error class ONP raises for bad user input."""


class ONPInputError(ValueError):
    """A user-supplied file, array or option is not what ONP expects.

    The message names the object (usually a file path), what was expected, what was found and,
    where possible, the fix.
    """
