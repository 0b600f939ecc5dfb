"""The one exception type users see: the CLI prints its message on one line."""


class CnnrunError(Exception):
    """A user-facing error (bad config, bad file, shapes that do not fit...)."""
