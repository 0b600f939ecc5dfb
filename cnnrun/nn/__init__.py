"""The numeric core: layers, loss, optimizer and network. Nothing here prints or reads
the terminal; the only file access is a network's weights, to and from .npz
(`Network.save`, `Network.load`)."""

from cnnrun.nn.layers import (
    AvgPool2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool, InstanceNorm, Layer, LeakyReLU, MaxPool2D, Normalize, ReLU,
    Reshape, Sigmoid, Softmax, Tanh,
)
from cnnrun.nn.losses import accuracy, one_hot, softmax_cross_entropy
from cnnrun.nn.network import LAYERS, Network
from cnnrun.nn.optim import SGD, Adam, RMSprop, exponential_lr, make_optimizer

__all__ = [
    "AvgPool2D", "Conv2D", "Dense", "Dropout", "Flatten", "GlobalAvgPool", "InstanceNorm", "Layer", "LeakyReLU", "MaxPool2D",
    "Normalize", "ReLU", "Reshape", "Sigmoid", "Softmax", "Tanh", "accuracy", "one_hot", "softmax_cross_entropy", "LAYERS", "Network",
    "SGD", "Adam", "RMSprop", "exponential_lr", "make_optimizer",
]
