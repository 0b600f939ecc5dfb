"""Value rules for config entries and layer arguments.

A rule is a pair `(what, check)`: `what` says in words what is expected (it
ends up in error messages), `check(value)` is True when the value is acceptable.
"""

import math


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    """A finite int or float (not a bool, not nan or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_or_pair(minimum):
    def check(v):
        if is_int(v):
            return v >= minimum
        return isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) and x >= minimum for x in v)
    return check


def optional(rule):
    """The rule, or null."""
    what, check = rule
    return (f"{what} or null", lambda v: v is None or check(v))


def choice(*options):
    """One of `options`."""
    return (" or ".join(repr(o) for o in options), lambda v: isinstance(v, str) and v in options)


POSITIVE_INT = ("a positive integer", lambda v: is_int(v) and v > 0)
NON_NEGATIVE_INT = ("a non-negative integer", lambda v: is_int(v) and v >= 0)
NON_NEGATIVE_NUMBER = ("a non-negative number", lambda v: is_number(v) and v >= 0)
POSITIVE_NUMBER = ("a positive number", lambda v: is_number(v) and v > 0)
NUMBER = ("a number", is_number)
BOOL = ("true or false", lambda v: isinstance(v, bool))
UNIT = ("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1)
RATE = ("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1)
STRING = ("a string", lambda v: isinstance(v, str) and v != "")
SIZE = ("a positive integer or a pair [h, w] of them", _int_or_pair(1))
PADDING = ("a non-negative integer or a pair [h, w] of them", _int_or_pair(0))
SHAPE = ("a list of positive integers", lambda v: isinstance(v, (list, tuple)) and len(v) > 0
         and all(is_int(x) and x > 0 for x in v))
INIT = choice("he", "glorot")
LAYER_LIST = ("a non-empty list of layers", lambda v: isinstance(v, list) and len(v) > 0)
SHORTCUT = ("'identity' or a non-empty list of layers", lambda v: v == "identity" or LAYER_LIST[1](v))
