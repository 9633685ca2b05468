class FormatError(ValueError):
    """A file we were asked to read cannot be used.

    The message always names the file (and the key, tensor or line where that
    helps) and says what is wrong, so a CLI can print it as one line.
    """
