"""cnnrun: convolutional networks written by hand in NumPy, run from the command line."""

__version__ = "0.3.0.dev0"
