"""cnnrun: convolutional networks written by hand in NumPy, run from the command line."""

__version__ = "0.1.0"
