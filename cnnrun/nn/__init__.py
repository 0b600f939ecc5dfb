"""The numeric core: layers, loss, optimizer and network. Nothing here prints or reads
the terminal; the only file access is a network's weights, to and from .npz
(`Network.save`, `Network.load`)."""

from cnnrun.nn.layers import (
    Conv2D, Dense, Flatten, InstanceNorm, Layer, MaxPool2D, Normalize, ReLU, Reshape, Softmax,
)
from cnnrun.nn.losses import accuracy, one_hot, softmax_cross_entropy
from cnnrun.nn.network import LAYERS, Network
from cnnrun.nn.optim import SGD, Adam, exponential_lr, make_optimizer

__all__ = [
    "Conv2D", "Dense", "Flatten", "InstanceNorm", "Layer", "MaxPool2D", "Normalize", "ReLU",
    "Reshape", "Softmax", "accuracy", "one_hot", "softmax_cross_entropy", "LAYERS", "Network",
    "SGD", "Adam", "exponential_lr", "make_optimizer",
]
