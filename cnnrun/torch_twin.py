"""The PyTorch twin of a cnnrun network: the same layers with the same weights.

A yardstick only, for `cnnrun bench --against torch` and the tests: the engine
never imports this module. PyTorch comes with the optional extra
`pip install -e '.[bench]'`.
"""

import torch
from torch import nn

from cnnrun.errors import CnnrunError
from cnnrun.nn.optim import decays_of, learning_rate, weight_decay_of


def twin(net):
    """A `torch.nn.Sequential` computing `net.logits` in evaluation mode: one module per
    cnnrun layer but the final softmax, at the same index, holding copies of the same
    weights and buffers (each made by its kind's entry in TWINS)."""
    dtype = getattr(torch, net.dtype.name)
    return nn.Sequential(*[module(layer, dtype, f"layer {index}")
                           for index, layer in enumerate(net.layers[:-1])]).eval()  # as a cnnrun network is built


def module(layer, dtype, where="layer"):
    """The torch module (of torch `dtype`) of one cnnrun layer: its kind's entry in TWINS."""
    if layer.kind not in TWINS:
        raise CnnrunError(f"{where} ({layer.kind}) has no PyTorch twin")
    p = {name: torch.tensor(value) for name, value in layer.params.items()}
    return TWINS[layer.kind](layer, p, dtype)


def _conv(layer, p, dtype):
    module = nn.Conv2d(layer.in_shape[0], layer.filters, layer.kernel, layer.stride, layer.padding,
                       bias=layer.bias, dtype=dtype)
    _copy(module, weight=p["W"], bias=p.get("b"))
    return module


def _instance_norm(layer, p, dtype):
    module = nn.InstanceNorm2d(layer.in_shape[0], eps=layer.eps, affine=layer.affine, dtype=dtype)
    if layer.affine:
        _copy(module, weight=p["gamma"], bias=p["beta"])
    return module


def _batch_norm(layer, p, dtype):
    kind = nn.BatchNorm2d if len(layer.in_shape) == 3 else nn.BatchNorm1d
    module = kind(layer.in_shape[0], eps=layer.eps, momentum=layer.momentum, affine=layer.affine, dtype=dtype)
    if layer.affine:
        _copy(module, weight=p["gamma"], bias=p["beta"])
    with torch.no_grad():
        module.running_mean.copy_(torch.tensor(layer.buffers["running_mean"]))
        module.running_var.copy_(torch.tensor(layer.buffers["running_var"]))
    return module


class Residual(nn.Module):
    """body(x) + shortcut(x), each branch a Sequential (an empty one: the identity)."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = nn.Sequential(*body), nn.Sequential(*shortcut)

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def _residual(layer, p, dtype):
    return Residual(*[[module(sub, dtype, f"{branch}[{j}]") for j, sub in enumerate(getattr(layer, branch))]
                      for branch in ("body", "shortcut")])


def _dense(layer, p, dtype):
    module = nn.Linear(layer.in_shape[0], layer.units, bias=layer.bias, dtype=dtype)
    _copy(module, weight=p["W"].T, bias=p.get("b"))  # torch keeps W as (units, D)
    return module


# Layer kind -> `(layer, its parameters as tensors, dtype) -> torch module`: the twin of
# every layer in cnnrun.nn.network.LAYERS but softmax (fused into the loss).
TWINS = {
    "normalize": lambda layer, p, dtype: Normalize(layer.mean, layer.std),
    "conv": _conv,
    "maxpool": lambda layer, p, dtype: nn.MaxPool2d(layer.kernel, layer.stride, layer.padding),
    "instance_norm": _instance_norm,
    "relu": lambda layer, p, dtype: nn.ReLU(),
    "flatten": lambda layer, p, dtype: nn.Flatten(),
    "reshape": lambda layer, p, dtype: Reshape(layer.shape),
    "dense": _dense,
    "avgpool": lambda layer, p, dtype: nn.AvgPool2d(layer.kernel, layer.stride, layer.padding, count_include_pad=True),
    "global_avgpool": lambda layer, p, dtype: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    "leaky_relu": lambda layer, p, dtype: nn.LeakyReLU(layer.slope),
    "tanh": lambda layer, p, dtype: nn.Tanh(),
    "sigmoid": lambda layer, p, dtype: nn.Sigmoid(),
    "dropout": lambda layer, p, dtype: nn.Dropout(layer.rate),  # (the identity in eval mode, as cnnrun's)
    "batch_norm": _batch_norm,
    "residual": _residual,
}
# Layer kind -> {cnnrun's parameter name: the twin module's}, for every layer with parameters of
# its own (a residual block's are its layers').
PARAMETERS = {"conv": {"W": "weight", "b": "bias"}, "dense": {"W": "weight", "b": "bias"},
              "instance_norm": {"gamma": "weight", "beta": "bias"}, "batch_norm": {"gamma": "weight", "beta": "bias"}}


def tensor(model_module, layer, name):
    """The twin's tensor of cnnrun's parameter or buffer `name` of `layer` (`W`, or
    `body.0.conv.W` in a residual block, or a batch norm's `running_mean`)."""
    if layer.kind == "residual":
        branch, j, _, rest = name.split(".", 3)
        return tensor(getattr(model_module, branch)[int(j)], getattr(layer, branch)[int(j)], rest)
    return getattr(model_module, PARAMETERS.get(layer.kind, {}).get(name, name))


def _copy(module, weight, bias):
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)


def gradients(model, net):
    """The twin's parameter gradients after a backward pass, by cnnrun's qualified
    names and in cnnrun's layouts (`{"1.conv.W": array, ...}`), like `net.named_gradients()`."""
    grads = {}
    for i, layer in enumerate(net.layers[:-1]):
        for name in layer.params:
            g = tensor(model[i], layer, name).grad.numpy()
            dense_weight = (layer.kind, name) == ("dense", "W") or name.endswith(".dense.W")  # (in a block)
            grads[f"{i}.{layer.kind}.{name}"] = g.T if dense_weight else g  # torch keeps W as (units, D)
    return grads


def buffers(model, net):
    """The twin's buffers by cnnrun's qualified names, like `net.named_buffers()`."""
    return {f"{i}.{layer.kind}.{name}": tensor(model[i], layer, name).detach().numpy().copy()
            for i, layer in enumerate(net.layers[:-1]) for name in layer.buffers}


def make_optimizer(model, train_cfg, step=0, steps_per_epoch=1, names=None):
    """The torch optimizer matching the config's (SGD with its momentum and Nesterov, Adam,
    AdamW or RMSprop, with its weight decay on the parameters it applies to, `names` being
    cnnrun's names of the twin's parameters in order), at the rate the config's schedule
    gives training step `step` (cnnrun.nn.optim.learning_rate)."""
    lr = learning_rate(train_cfg, step, steps_per_epoch)
    wd, params = weight_decay_of(train_cfg), list(model.parameters())
    decays = decays_of(train_cfg, names) if names is not None else None
    if decays is None:
        groups = [{"params": params, "weight_decay": wd}]
    else:
        groups = [group for group in ({"params": [p for p, d in zip(params, decays) if d], "weight_decay": wd},
                                      {"params": [p for p, d in zip(params, decays) if not d], "weight_decay": 0.0})
                  if group["params"]]
    kind, momentum = train_cfg["optimizer"], train_cfg["momentum"]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=train_cfg.get("nesterov", False))


class Normalize(nn.Module):
    """(x - mean) / std, as cnnrun's normalize layer."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


class Reshape(nn.Module):
    """`(N, *in_shape)` -> `(N, *shape)`."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.shape)


def train_step(model, optimizer, x, labels):
    """One training step of the twin, in train mode as cnnrun's (dropout drawing, batch norm
    on the batch's statistics): forward, mean cross-entropy, backward, update; back in
    evaluation mode after it."""
    model.train()
    optimizer.zero_grad(set_to_none=False)
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    optimizer.step()
    model.eval()


def input_gradient(model, x, labels):
    """What one attack step needs: the loss gradient on the input only."""
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), labels), x)[0]
