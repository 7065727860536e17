"""Data movement and shape kernels: Reshape, Transpose, Slice, Gather*, Concat, Split, Cast, ..."""
from __future__ import annotations

import numpy as np

from ..errors import KernelError
from . import kernel


def _ints(xp, v) -> list[int]:
    """An axes/shape argument (attribute list or 1-D int tensor) as Python ints."""
    if v is None:
        return []
    if hasattr(v, "tolist"):
        v = v.tolist()
    return [int(i) for i in (v if isinstance(v, (list, tuple)) else [v])]


@kernel("Shape")
def Shape(xp, data, start=0, end=None):
    return xp.asarray(data.shape[start:end], dtype=np.int64)


@kernel("Size")
def Size(xp, data):
    return xp.asarray(data.size, dtype=np.int64)


@kernel("Reshape")
def Reshape(xp, data, shape, allowzero=0):
    target = _ints(xp, shape)
    if not allowzero:
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


@kernel("Flatten")
def Flatten(xp, x, axis=1):
    axis = axis % x.ndim if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


@kernel("Transpose")
def Transpose(xp, data, perm=None):
    return xp.transpose(data, perm)


@kernel("Squeeze")
def Squeeze(xp, data, axes=None):
    axes = _ints(xp, axes)
    return xp.squeeze(data, tuple(axes)) if axes else xp.squeeze(data)


@kernel("Unsqueeze")
def Unsqueeze(xp, data, axes):
    axes = _ints(xp, axes)
    rank = data.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        data = xp.expand_dims(data, a)
    return data


@kernel("Concat")
def Concat(xp, *inputs, axis):
    return xp.concatenate([i for i in inputs], axis=axis)


@kernel("Split")
def Split(xp, x, split=None, axis=0, num_outputs=None, _n_outputs=1):
    length = x.shape[axis]
    sizes = _ints(xp, split)
    if not sizes:
        n = num_outputs or _n_outputs
        chunk = -(-length // n)
        sizes = [min(chunk, length - i * chunk) for i in range(n)]
    bounds = np.cumsum([0] + sizes)
    index = [slice(None)] * x.ndim
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index[axis % x.ndim] = slice(int(lo), int(hi))
        out.append(x[tuple(index)])
    return tuple(out)


def slice_index(xp, shape, starts, ends, axes=None, steps=None) -> tuple:
    """The numpy index tuple of an ONNX Slice on a tensor of ``shape`` (clamped like the spec)."""
    starts, ends = _ints(xp, starts), _ints(xp, ends)
    axes = _ints(xp, axes) or list(range(len(starts)))
    steps = _ints(xp, steps) or [1] * len(starts)
    index = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        n = shape[a]
        s = max(-n - 1, min(s, n)) if st < 0 else max(-n, min(s, n))
        e = max(-n - 1, min(e, n))
        if st < 0 and e < -n:
            e = None
        index[a % len(shape)] = slice(s, e, st)
    return tuple(index)


@kernel("Slice")
def Slice(xp, data, starts, ends, axes=None, steps=None):
    return data[slice_index(xp, data.shape, starts, ends, axes, steps)]


@kernel("Gather")
def Gather(xp, data, indices, axis=0):
    return xp.take(data, _wrap(xp, indices, data.shape[axis]), axis=axis)


def _wrap(xp, indices, n):
    """Negative indices count from the end (ONNX); out-of-range ones are an error."""
    indices = xp.asarray(indices).astype(np.int64, copy=False)
    if indices.size and (int(indices.max()) >= n or int(indices.min()) < -n):
        raise KernelError(f"index out of range for an axis of length {n}")
    return xp.where(indices < 0, indices + n, indices)


@kernel("GatherElements")
def GatherElements(xp, data, indices, axis=0):
    return xp.take_along_axis(data, _wrap(xp, indices, data.shape[axis]), axis=axis)


@kernel("GatherND")
def GatherND(xp, data, indices, batch_dims=0):
    indices = xp.asarray(indices).astype(np.int64)
    b = batch_dims
    batch_shape = data.shape[:b]
    nb = int(np.prod(batch_shape, dtype=np.int64))
    k = indices.shape[-1]
    d = data.reshape((nb,) + data.shape[b:])
    ind = indices.reshape((nb, -1, k))
    ind = xp.where(ind < 0, ind + xp.asarray(d.shape[1:1 + k]), ind)
    rows = xp.arange(nb)[:, None]
    out = d[(rows,) + tuple(ind[..., j] for j in range(k))]
    return out.reshape(indices.shape[:-1] + data.shape[b + k:])


@kernel("ScatterND")
def ScatterND(xp, data, indices, updates, reduction="none"):
    out = data.copy()
    idx = tuple(xp.moveaxis(xp.asarray(indices), -1, 0))
    if reduction == "add":
        xp.add.at(out, idx, updates)
    elif reduction == "mul":
        xp.multiply.at(out, idx, updates)
    elif reduction == "max":
        xp.maximum.at(out, idx, updates)
    elif reduction == "min":
        xp.minimum.at(out, idx, updates)
    else:
        out[idx] = updates
    return out


@kernel("Expand")
def Expand(xp, x, shape):
    shape = _ints(xp, shape)
    target = np.broadcast_shapes(x.shape, tuple(shape))
    return xp.broadcast_to(x, target)


@kernel("Tile")
def Tile(xp, x, repeats):
    return xp.tile(x, _ints(xp, repeats))


@kernel("Pad")
def Pad(xp, data, pads, constant_value=None, axes=None, mode="constant", value=0.0):
    pads = _ints(xp, pads)
    axes = _ints(xp, axes) or list(range(data.ndim))
    half = len(axes)
    width = [(0, 0)] * data.ndim
    for i, a in enumerate(axes):
        width[a % data.ndim] = (pads[i], pads[i + half])
    if any(lo < 0 or hi < 0 for lo, hi in width):  # negative pads crop
        index = tuple(slice(max(-lo, 0), data.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(width))
        data = data[index]
        width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    if mode == "constant":
        fill = value if constant_value is None else constant_value
        fill = fill.item() if hasattr(fill, "item") and getattr(fill, "size", 1) == 1 else fill
        return xp.pad(data, width, mode="constant", constant_values=fill)
    return xp.pad(data, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


@kernel("Cast")
def Cast(xp, x, to, saturate=1, round_mode="up"):
    return x.astype(to, copy=False)


@kernel("CastLike")
def CastLike(xp, x, like, saturate=1, round_mode="up"):
    return x.astype(like.dtype, copy=False)


@kernel("Constant")
def Constant(xp, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             sparse_value=None, value_string=None, value_strings=None, _float=np.float32):
    if value is not None:
        return xp.asarray(value)
    if value_float is not None:
        return xp.asarray(value_float, dtype=_float)
    if value_floats is not None:
        return xp.asarray(value_floats, dtype=_float)
    if value_int is not None:
        return xp.asarray(value_int, dtype=np.int64)
    if value_ints is not None:
        return xp.asarray(value_ints, dtype=np.int64)
    raise KernelError("Constant without a supported value attribute")


@kernel("ConstantOfShape")
def ConstantOfShape(xp, shape, value=None):
    if value is None:
        value = np.zeros(1, dtype=np.float32)
    return xp.full(tuple(_ints(xp, shape)), value.reshape(-1)[0], dtype=value.dtype)


@kernel("Range")
def Range(xp, start, limit, delta):
    n = max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0)
    return (xp.arange(n) * delta + start).astype(start.dtype, copy=False)


@kernel("EyeLike")
def EyeLike(xp, x, dtype=None, k=0):
    return xp.eye(x.shape[0], x.shape[1], k=k, dtype=dtype if dtype is not None else x.dtype)


@kernel("Trilu")
def Trilu(xp, x, k=None, upper=1):
    k = int(k.item()) if k is not None else 0
    return xp.triu(x, k) if upper else xp.tril(x, k)


@kernel("CumSum")
def CumSum(xp, x, axis, exclusive=0, reverse=0):
    a = int(axis.item()) % x.ndim
    if reverse:
        x = xp.flip(x, a)
    out = xp.cumsum(x, axis=a, dtype=x.dtype)
    if exclusive:
        out = xp.concatenate([xp.zeros_like(xp.take(out, [0], axis=a)), xp.take(out, range(x.shape[a] - 1), axis=a)], axis=a)
    return xp.flip(out, a) if reverse else out


@kernel("OneHot")
def OneHot(xp, indices, depth, values, axis=-1):
    d = int(depth.item())
    ind = xp.asarray(indices).astype(np.int64)
    ind = xp.where(ind < 0, ind + d, ind)
    hot = xp.expand_dims(ind, -1) == xp.arange(d)
    hot = xp.moveaxis(hot, -1, axis % (ind.ndim + 1))
    return xp.where(hot, values[1], values[0])


@kernel("ArgMax")
def ArgMax(xp, data, axis=0, keepdims=1, select_last_index=0):
    return _arg(xp, xp.argmax, data, axis, keepdims, select_last_index)


@kernel("ArgMin")
def ArgMin(xp, data, axis=0, keepdims=1, select_last_index=0):
    return _arg(xp, xp.argmin, data, axis, keepdims, select_last_index)


def _arg(xp, fn, data, axis, keepdims, last):
    if last:
        out = data.shape[axis] - 1 - fn(xp.flip(data, axis), axis=axis)
    else:
        out = fn(data, axis=axis)
    out = out.astype(np.int64)
    return xp.expand_dims(out, axis) if keepdims else out
