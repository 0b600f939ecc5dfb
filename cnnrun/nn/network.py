"""A network: a plain sequence of layers, built for one input shape."""

import functools
import io

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.fileio import write_atomic
from cnnrun.nn.layers import LAYERS, Softmax, make_layer, walk, walk_named
from cnnrun.nn import parallel, reference, sequence
from cnnrun.nn.losses import softmax_cross_entropy, softmax_cross_entropy_grad

# The two engines: the fast layers, and the same layers written as their equations (reference.py).
ENGINES = {"fast": LAYERS, "reference": reference.LAYERS}


def gib(n):
    """Bytes as a short human figure: '3.2 GiB', '512 MiB'."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def in_eval_mode(fn):
    """Decorate `fn(net, ...)` to run with the network in evaluation mode (dropout off, batch
    norm on its running statistics, so that no buffer changes) and give the network back in
    the mode it was in. Every attack is so decorated: an attack cannot see or change what
    training mode would."""
    @functools.wraps(fn)
    def in_eval(net, *args, **kwargs):
        was_training = net.training
        net.eval()
        try:
            return fn(net, *args, **kwargs)
        finally:
            if was_training:
                net.train()
    return in_eval


def is_finite_real(a):
    """Whether the array `a` holds real numbers only (ints or floats), none NaN or infinite."""
    return a.dtype.kind in "iu" or (a.dtype.kind == "f" and bool(np.isfinite(a).all()))


class Network:
    """Layers applied in order to `(N, *input_shape)` batches; ends with softmax.

    `layer_specs` is a list of `(kind, kwargs)`, e.g. `("conv", {"filters": 8, "kernel": 3})`
    (or of config entries: `"relu"`, `{"conv": {"filters": 8, "kernel": 3}}`).
    Each layer's output shape is inferred at build time; a layer that does not
    fit its input fails here with its index, type and the shapes involved.

    A batch runs in parts of at most 64 samples, on up to `threads` threads
    (default: `CNNRUN_THREADS`, else every core; see parallel.py); each part has
    its own copy of the layers, and `layers` holds the parameters and the summed
    gradients.

    `engine` is "fast" (layers.py on kernels.py) or "reference" (reference.py: the
    equations, slower); both build the same layers with the same initial weights.
    """

    def __init__(self, layer_specs, input_shape, seed=0, dtype=np.float32, batch_size=1, memory_limit=None,
                 threads=None, engine="fast"):
        if engine not in ENGINES:
            raise CnnrunError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.engine, classes = engine, ENGINES[engine]
        self.input_shape, self.dtype = tuple(input_shape), np.dtype(dtype)
        self.threads = parallel.default_threads() if threads is None else threads
        self.replicas, self.parts = [], []  # copies of the layers, one per part of the last batch
        self.training = False  # evaluation mode until `train()`: dropout off
        self.noise = np.random.default_rng([seed, 2])  # dropout's draws in training (`train(noise)` sets one)
        self.layers, self.shapes = [], [self.input_shape]
        for index, entry in enumerate(layer_specs):
            layer = make_layer(classes, entry, f"layer {index}")
            try:
                shape = layer.build(self.shapes[-1])
            except CnnrunError as e:  # shapes that do not fit
                raise CnnrunError(f"layer {index} ({layer.kind}): {e}") from None
            if min(shape, default=1) < 1:
                raise CnnrunError(f"layer {index} ({layer.kind}): input shape {self.shapes[-1]} "
                                  f"gives an empty output {shape}")
            self.layers.append(layer)
            self.shapes.append(tuple(shape))
        if not self.layers or not isinstance(self.layers[-1], Softmax):
            raise CnnrunError("the last layer must be softmax (the loss is categorical cross-entropy)")
        if memory_limit is not None:
            self.check_memory(batch_size, memory_limit)
        rng = np.random.default_rng(seed)
        for layer in self.layers:  # only now are parameters allocated
            layer.init_params(rng, self.dtype)

    def named_layers(self, layers=None):
        """`[("0.conv", layer), ..., ("4.residual.body.0.conv", layer), ...]`: every layer,
        those inside residual blocks too, by qualified name; of `layers` (a part's copy) if given."""
        return list(walk_named((f"{i}.{layer.kind}", layer) for i, layer in enumerate(layers or self.layers)))

    def conv_plans(self, batch_size):
        """`{layer name: kernels.ConvPlan}`: the kernels each convolution (those in residual
        blocks too) runs on a part of a batch of `batch_size` (the parts a training step's
        threads run; parallel.parts)."""
        if self.engine != "fast":
            return {}
        part = parallel.parts(batch_size)[0]
        return {name: layer.plan_for(part.stop - part.start, self.dtype.itemsize)
                for name, layer in self.named_layers() if layer.kind == "conv"}

    def memory_bytes(self, batch_size):
        """Estimated bytes each layer needs in training, before anything is allocated:
        parameters with their gradients and two optimizer states (4 copies), plus
        `batch_size` samples of its input, output, cache and work buffers."""
        itemsize = self.dtype.itemsize
        needs = []
        for layer, in_shape, out_shape in zip(self.layers, self.shapes, self.shapes[1:]):
            params = sum(int(np.prod(shape)) for shape in layer.param_shapes().values())
            per_sample = 2 * int(np.prod(in_shape)) + 2 * int(np.prod(out_shape)) + layer.scratch_per_sample()
            needs.append((4 * params + batch_size * per_sample) * itemsize)
        return needs

    def check_memory(self, batch_size, limit):
        """Refuse if training at `batch_size` needs more than `limit` bytes, naming the first
        layer that alone needs more (where the sizes blow up), else the largest."""
        needs = self.memory_bytes(batch_size)
        if sum(needs) > limit:
            over = [i for i, need in enumerate(needs) if need > limit]
            index = over[0] if over else int(np.argmax(needs))
            raise CnnrunError(f"layer {index} ({self.layers[index].kind}): needs about {gib(needs[index])} "
                              f"(parameters, and activations for a batch of {batch_size}); the whole network "
                              f"about {gib(sum(needs))}, and this machine has {gib(limit)} available")

    @property
    def output_shape(self):
        return self.shapes[-1]

    # --- parameters -------------------------------------------------------

    def _by_name(self, which, names="params"):
        return {f"{i}.{layer.kind}.{name}": getattr(layer, which)[name]
                for i, layer in enumerate(self.layers) for name in getattr(layer, names)}

    def named_parameters(self):
        """`{"0.conv.W": array, ...}`: every parameter by qualified name (the arrays themselves)."""
        return self._by_name("params")

    def named_gradients(self):
        """The gradients of the last backward pass, by the same qualified names."""
        return self._by_name("grads")

    def named_buffers(self):
        """`{"2.batch_norm.running_mean": array, ...}`: state that is not learnt by gradient
        (batch norm's running statistics), saved with the weights; no optimizer sees it."""
        return self._by_name("buffers", "buffers")

    def param_grad_pairs(self):
        """`[(param, grad), ...]` after a backward pass, for the optimizer."""
        return list(zip(self.named_parameters().values(), self.named_gradients().values()))

    def num_parameters(self):
        return sum(p.size for p in self.named_parameters().values())

    # --- passes -----------------------------------------------------------

    def train(self, noise=None):
        """Training mode (dropout active), its random draws from `noise` (a NumPy Generator;
        the runner gives one per epoch, so a resumed run draws what an uninterrupted one
        does). Returns the network."""
        self.training = True
        if noise is not None:
            self.noise = noise
        return self

    def eval(self):
        """Evaluation mode (dropout the identity): what evaluation, attacks, predict and
        export use. A network is built in this mode. Returns the network."""
        self.training = False
        return self

    def _start_batch(self, x):
        """Cut the batch `x` into parts, with a replica of the layers for each, in the
        network's mode; x as an array. In training, each stochastic layer of each part gets
        a generator of its own from one draw of the network's noise per batch: the same
        numbers on any number of threads (the parts depend on the batch size only)."""
        x = np.asarray(x, self.dtype)
        self.parts = parallel.parts(len(x))
        while len(self.replicas) < len(self.parts):
            self.replicas.append([layer.replica() for layer in self.layers])
        draws = self.training and any(layer.stochastic for layer in walk(self.layers))
        batch_seed = int(self.noise.integers(2 ** 63)) if draws else None
        for part, replica in enumerate(self.replicas[:len(self.parts)]):
            for index, layer in enumerate(walk(replica)):  # (and the layers inside residual blocks)
                layer.training = self.training
                if draws and layer.stochastic:
                    layer.rng = np.random.default_rng([batch_seed, part, index])
        return x

    def _columns(self):
        """Each part's copy of the layers but the final softmax (sequence.py)."""
        return [replica[:-1] for replica in self.replicas[:len(self.parts)]]

    def _forward_parts(self, x):
        """The logits of each part of the batch `x`, through the parts' copies of the layers."""
        return sequence.forward(self._columns(), [x[part] for part in self.parts], self.threads)

    def _backward_parts(self, dlogits, need_input_grad, need_param_grads):
        """Each part's rows of `dlogits` back through its copy; the parts' input gradients."""
        need_dx = sequence.needs_input_grad(self.layers[:-1], need_input_grad, need_param_grads)
        return sequence.backward(self._columns(), [dlogits[part] for part in self.parts], need_dx,
                                 need_param_grads, self.threads)

    def _sum_part_grads(self):
        """`grads` of each layer: the sum of its replicas' over the parts."""
        for index, layer in enumerate(self.layers):
            for name in layer.params:
                total = self.replicas[0][index].grads[name]
                for replica in self.replicas[1:len(self.parts)]:
                    total = total + replica[index].grads[name]
                layer.grads[name] = total

    def logits(self, x):
        """Scores before the final softmax: `(N, *input_shape)` -> `(N, K)`."""
        return np.concatenate(self._forward_parts(self._start_batch(x)))

    def forward(self, x):
        """Class probabilities `(N, K)`."""
        return self.layers[-1].forward(self.logits(x))

    def backward(self, dlogits, need_input_grad=True, need_param_grads=True):
        """Back-propagate a loss gradient on the logits `(N, K)` of the last `logits` call
        (any loss: cross-entropy, or an attack's). Fills `grads` if `need_param_grads`
        (the sum over the parts); returns the gradient on the input `(N, *input_shape)`,
        or None if not needed."""
        if len(dlogits) != (self.parts[-1].stop if self.parts else -1):
            raise ValueError(f"backward of {len(dlogits)} samples: the last forward pass was not of this batch")
        input_grads = self._backward_parts(dlogits, need_input_grad, need_param_grads)
        if need_param_grads:
            self._sum_part_grads()
        return np.concatenate(input_grads) if need_input_grad else None

    def loss_and_backward(self, x, y, need_input_grad=False, need_param_grads=True):
        """Forward, loss against one-hot `y` `(N, K)`, backward.

        Returns `(loss, logits, input_grad)`; `input_grad` is None unless asked for.
        Each part goes forward and back in one task when no layer couples the batch: the
        loss gradient of a row needs only that row, so the parts never wait for each other.
        """
        x, y = self._start_batch(x), np.asarray(y, self.dtype)
        need_dx = sequence.needs_input_grad(self.layers[:-1], need_input_grad, need_param_grads)
        if sequence.couples_batch(self.replicas[0]):  # batch norm in training: stage by stage
            logits = self._forward_parts(x)
            dlogits = [softmax_cross_entropy_grad(z, y[part], len(x)) for z, part in zip(logits, self.parts)]
            input_grads = sequence.backward(self._columns(), dlogits, need_dx, need_param_grads, self.threads)
        else:
            def part_step(i):
                column = self.replicas[i][:-1]
                z = sequence.forward_layers(column, x[self.parts[i]])
                dlogits = softmax_cross_entropy_grad(z, y[self.parts[i]], len(x))
                return z, sequence.backward_layers(column, dlogits, need_dx, need_param_grads)

            logits, input_grads = zip(*parallel.run(part_step, range(len(self.parts)), self.threads))
        if need_param_grads:
            self._sum_part_grads()
        logits = np.concatenate(logits)
        loss, _ = softmax_cross_entropy(logits, y)  # the mean over the whole batch, as one sum
        return loss, logits, np.concatenate(input_grads) if need_input_grad else None

    # --- weights on disk --------------------------------------------------

    def to_npz(self, extra=None):
        """Every parameter and buffer (and the arrays of `extra`) as the bytes of an `.npz`
        file, under qualified names."""
        arrays = {**self.named_parameters(), **self.named_buffers()}
        arrays.update(extra or {})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def save(self, path, extra=None):
        """Write `to_npz(extra)` to `path` atomically (temporary file + rename): a kill
        never leaves a broken file. Returns the bytes written."""
        data = self.to_npz(extra)
        write_atomic(path, data)
        return data

    def load(self, path):
        """Read parameters and buffers saved by `save`; every name and shape must match this
        network. Returns the file's other arrays (a checkpoint's epoch and optimizer state)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise CnnrunError(f"{path}: no such weights file") from None
        except Exception as e:
            raise CnnrunError(f"{path}: not a readable .npz weights file ({e})") from None
        params = {**self.named_parameters(), **self.named_buffers()}
        problems = [f"{name} missing" for name in params if name not in stored]
        problems += [f"{name} is {stored[name].shape}, the config needs {p.shape}"
                     for name, p in params.items() if name in stored and stored[name].shape != p.shape]
        unexpected = [k for k in stored if k.split(".")[0].isdigit() and k not in params]
        problems += [f"{name} is not in the config" for name in unexpected]
        if problems:
            raise CnnrunError(f"{path}: weights do not fit the config: {'; '.join(problems)}")
        damaged = [name for name in params if not is_finite_real(stored[name])]
        if damaged:
            raise CnnrunError(f"{path}: damaged weights: {', '.join(damaged)} hold NaN, infinite or non-numeric values")
        for name, p in params.items():
            p[...] = stored[name]
        return {k: v for k, v in stored.items() if k not in params}
