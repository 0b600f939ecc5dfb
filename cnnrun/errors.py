"""The one exception type users see: the CLI prints its message on one line."""


class CnnrunError(Exception):
    """A user-facing error (bad config, bad file, shapes that do not fit...)."""


def interrupted(error):
    """Whether Ctrl-C (or SIGTERM, raised as KeyboardInterrupt) is behind `error`: one that
    lands inside an import (say matplotlib's first figure) comes out as an ImportError
    caused by it."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__
    return False
