"""A sequence of layers run over the parts of a batch, the parts side by side.

A batch runs in parts, each through its own copy of the layers (parallel.py):
`columns[i]` is part i's copy of the sequence, `hs[i]` part i's activations.
Most layers treat each sample alone, so a part can run through a whole stretch
of them without waiting for the others: one task per part. A layer that couples
the samples (`layer.couples_batch`: batch norm in training, or a residual block
holding one) needs all the parts at once; the sequence is cut there into stages:

    stage 1: each part alone        conv, relu      (one task per part, in parallel)
    stage 2: all the parts at once  batch_norm      (layer.forward_parts: its statistics
                                                     summed over the parts, then applied)
    stage 3: each part alone        relu, maxpool, ...

A network without such a layer (or in evaluation mode) is one stage, and its
parts never wait for each other. Backward runs the stages in reverse.
"""

from cnnrun.nn import parallel


def stages(layers):
    """`[(start, stop), ...]` cutting `layers` into runs of layers that see one part at a
    time, and single layers that couple the batch (each a stage of its own)."""
    cuts, start = [], 0
    for index, layer in enumerate(layers):
        if layer.couples_batch:
            if index > start:
                cuts.append((start, index))
            cuts.append((index, index + 1))
            start = index + 1
    if start < len(layers):
        cuts.append((start, len(layers)))
    return cuts


def couples_batch(layers):
    """Whether any of `layers` needs the whole batch at once (more than one stage)."""
    return any(layer.couples_batch for layer in layers)


def needs_input_grad(layers, need_input_grad, need_param_grads):
    """For each layer, whether its input gradient is needed: the first's if the caller
    wants the input's; any later one's if a layer before it has parameters to learn."""
    need = [need_input_grad]
    for layer in layers[:-1]:
        need.append(need[-1] or (need_param_grads and bool(layer.params)))
    return need


def forward_layers(layers, h):
    """`h` through `layers`, one after the other (one part, or a whole batch)."""
    for layer in layers:
        h = layer.forward(h)
    return h


def backward_layers(layers, dy, need_dx, need_grads):
    """`dy` back through `layers` (one part); `need_dx[k]` for layer k. None where no
    gradient is needed further down."""
    for layer, need in zip(reversed(layers), reversed(need_dx)):
        dy = layer.backward(dy, need_dx=need, need_grads=need_grads)
        if dy is None:
            break
    return dy


def forward(columns, hs, threads):
    """Each part's input `hs[i]` through its copy `columns[i]` of the layers, stage by
    stage; the parts' outputs."""
    for start, stop in stages(columns[0]):
        first = columns[0][start]
        if first.couples_batch:
            hs = first.forward_parts([column[start] for column in columns], hs, threads)
        else:
            hs = parallel.run(lambda i: forward_layers(columns[i][start:stop], hs[i]), range(len(hs)), threads)
    return hs


def backward(columns, dys, need_dx, need_grads, threads):
    """Each part's output gradient `dys[i]` back through `columns[i]`, stage by stage in
    reverse; `need_dx` as `needs_input_grad` gives it. Each copy's `grads` hold its part's
    share. Returns the parts' input gradients (None where not needed)."""
    for start, stop in reversed(stages(columns[0])):
        if dys[0] is None:
            break
        first = columns[0][start]
        if first.couples_batch:
            dys = first.backward_parts([column[start] for column in columns], dys, threads,
                                       need_dx[start], need_grads)
        else:
            dys = parallel.run(lambda i: backward_layers(columns[i][start:stop], dys[i], need_dx[start:stop],
                                                         need_grads), range(len(dys)), threads)
    return dys
