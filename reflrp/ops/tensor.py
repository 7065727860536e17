"""Data movement and shape kernels: Reshape, Transpose, Slice, Gather*, Concat, Split, Cast, ..."""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import cast, is_float, numpy_dtype, under_policy
from ..errors import KernelError, UnsupportedOpError
from . import adjoint, kernel
from . import kinds as K
from .grad import float64_bincount, unbroadcast


def _ints(xp, v) -> list[int]:
    """An axes/shape argument (attribute list or 1-D int tensor) as Python ints."""
    if v is None:
        return []
    if hasattr(v, "tolist"):
        v = v.tolist()
    return [int(i) for i in (v if isinstance(v, (list, tuple)) else [v])]


def axis_index(axis, rank: int, what: str = "axis", end: bool = False) -> int:
    """``axis`` counted from 0: ONNX allows ``-rank .. rank-1`` (``-rank .. rank`` with ``end``,
    for an axis that may sit after the last dimension, as Flatten's); anything else is an error."""
    a = int(axis.item() if hasattr(axis, "item") else axis)
    top = rank if end else rank - 1
    if not -rank <= a <= top:
        raise KernelError(f"{what} {a} is out of range for a rank-{rank} tensor (ONNX allows {-rank}..{top})")
    return a + rank if a < 0 else a


def axes_indices(xp, axes, rank: int, what: str = "axes", repeats: bool = False) -> tuple[int, ...]:
    """Every entry of an ``axes`` argument counted from 0 (each in ``-rank .. rank-1``). An axis named
    twice is an error, or (``repeats``: reductions and Squeeze, a set as in onnxruntime) counted once."""
    out = tuple(axis_index(a, rank, what) for a in _ints(xp, axes))
    if len(set(out)) != len(out):
        if not repeats:
            raise KernelError(f"{what} {_ints(xp, axes)} name an axis twice (rank {rank})")
        out = tuple(dict.fromkeys(out))
    return out


@kernel("Shape", kind=K.CONSTANT, reads_shape_only=True)
def Shape(xp, data, start=0, end=None):
    return xp.asarray(data.shape[start:end], dtype=np.int64)


@kernel("Size", kind=K.CONSTANT, reads_shape_only=True)
def Size(xp, data):
    return xp.asarray(data.size, dtype=np.int64)


@kernel("Reshape", since=5, kind=K.MOVE, relayout=True)
def Reshape(xp, data, shape, allowzero=0):
    """A 0 copies the input's dimension (a real 0 with ``allowzero``); one -1 is inferred."""
    target = _ints(xp, shape)
    if not allowzero:
        if any(d == 0 for d in target[data.ndim:]):
            raise KernelError(f"shape {target}: a 0 past the input's rank {data.ndim} has no dimension to copy")
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise KernelError(f"shape {target}: at most one -1 and no other negative dimension")
    if -1 in target:
        target[target.index(-1)] = _inferred_dim(data.shape, target, allowzero)
    return data.reshape(target)


def _relayout_vjp(xp, G, inputs, outputs, attrs, need):
    """Reshape, Flatten, Squeeze, Unsqueeze: the values are the same; lay the gradient out as the input."""
    x = inputs[0]
    return [G[0].reshape((G[0].shape[0],) + x.shape)] + [None] * (len(inputs) - 1)


def _inferred_dim(have, target, allowzero) -> int:
    """The -1 of a Reshape: size / product of the other dimensions. With ``allowzero`` an empty
    tensor and a 0 in ``target`` leave that undetermined (the spec calls the shape invalid); as
    onnxruntime does (dynamo exports reshape batch 0 so) the zero dimensions are left out of both."""
    known = math.prod(d for d in target if d != -1)
    if known:
        if math.prod(have) % known:
            raise KernelError(f"cannot reshape a tensor of shape {tuple(have)} to {target}")
        return math.prod(have) // known
    if allowzero and 0 in have:
        size, rest = math.prod(d for d in have if d), math.prod(d for d in target if d not in (0, -1))
        if size % rest == 0:
            return size // rest
    raise KernelError(f"shape {target}: the -1 cannot be inferred for a tensor of shape {tuple(have)}")


@kernel("Flatten", kind=K.MOVE, relayout=True)
def Flatten(xp, x, axis=1):
    """``(prod(shape[:axis]), prod(shape[axis:]))``; ``axis`` may be ``rank`` (then ``(size, 1)``)."""
    a = axis_index(axis, x.ndim, end=True)
    return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), int(np.prod(x.shape[a:], dtype=np.int64)))


@kernel("Transpose", kind=K.MOVE, relayout=True)
def Transpose(xp, data, perm=None):
    if perm is not None and sorted(int(p) for p in perm) != list(range(data.ndim)):
        raise KernelError(f"perm {list(perm)} is not a permutation of the {data.ndim} axes 0..{data.ndim - 1}")
    return xp.transpose(data, perm)


@adjoint("Transpose")
def _transpose_vjp(xp, G, inputs, outputs, attrs, need):
    perm = attrs.get("perm") or list(range(inputs[0].ndim))[::-1]
    return [xp.transpose(G[0], (0,) + tuple(1 + int(p) for p in np.argsort(perm)))]


@kernel("Squeeze", kind=K.MOVE, relayout=True)
def Squeeze(xp, data, axes=None):
    axes = axes_indices(xp, axes, data.ndim, repeats=True)
    wide = [a for a in axes if data.shape[a] != 1]
    if wide:
        raise KernelError(f"Squeeze axes {list(axes)}: axis {wide[0]} has size {data.shape[wide[0]]}, not 1")
    return xp.squeeze(data, axes) if axes else xp.squeeze(data)


@kernel("Unsqueeze", kind=K.MOVE, relayout=True)
def Unsqueeze(xp, data, axes):
    """``axes`` index the output, of rank ``data.ndim + len(axes)``."""
    axes = axes_indices(xp, axes, data.ndim + len(_ints(xp, axes)))
    for a in sorted(axes):
        data = xp.expand_dims(data, a)
    return data


@kernel("Concat", since=4, kind=K.MOVE)
def Concat(xp, *inputs, axis):
    return xp.concatenate([i for i in inputs], axis=axis_index(axis, inputs[0].ndim))


@adjoint("Concat")
def _concat_vjp(xp, G, inputs, outputs, attrs, need):
    """Each input gets its own slab of the output gradient."""
    axis = 1 + attrs["axis"] % inputs[0].ndim
    bounds = np.cumsum([0] + [x.shape[axis - 1] for x in inputs])
    index = [slice(None)] * G[0].ndim
    grads = []
    for lo, hi, n in zip(bounds[:-1], bounds[1:], need):
        index[axis] = slice(int(lo), int(hi))
        grads.append(G[0][tuple(index)] if n else None)
    return grads


@kernel("Split", since=2, kind=K.MOVE,
        decode_attrs=lambda attrs, policy, node: {**attrs, "_n_outputs": len(node.outputs)})
def Split(xp, x, split=None, axis=0, num_outputs=None, _n_outputs=1):
    """Sizes from ``split``, else ``num_outputs`` chunks of ``ceil(length / n)`` (the last smaller)."""
    a = axis_index(axis, x.ndim)
    length = x.shape[a]
    sizes = _ints(xp, split)
    if not sizes:
        n = num_outputs or _n_outputs
        chunk = -(-length // n)
        if num_outputs and length and chunk * (n - 1) >= length:  # as onnxruntime: no empty chunk
            raise KernelError(f"num_outputs={n} cannot split an axis of length {length} into non-empty chunks "
                              f"of {chunk} (the last one smaller)")
        sizes = [max(min(chunk, length - i * chunk), 0) for i in range(n)]
    if sum(sizes) != length or min(sizes) < 0:
        raise KernelError(f"split sizes {sizes} do not add up to the length {length} of axis {a}")
    bounds = np.cumsum([0] + sizes)
    index = [slice(None)] * x.ndim
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index[a] = slice(int(lo), int(hi))
        out.append(x[tuple(index)])
    return tuple(out)


@adjoint("Split")
def _split_vjp(xp, G, inputs, outputs, attrs, need):
    """The pieces' gradients side by side (zeros for pieces that received none)."""
    axis = 1 + attrs.get("axis", 0) % inputs[0].ndim
    k, dtype = next((g.shape[0], g.dtype) for g in G if g is not None)
    pieces = [g if g is not None else xp.zeros((k,) + o.shape, dtype=dtype) for g, o in zip(G, outputs)]
    return [xp.concatenate(pieces, axis=axis)] + [None] * (len(inputs) - 1)


def slice_index(xp, shape, starts, ends, axes=None, steps=None) -> tuple:
    """The numpy index tuple of an ONNX Slice on a tensor of ``shape`` (clamped like the spec)."""
    starts, ends = _ints(xp, starts), _ints(xp, ends)
    axes = axes_indices(xp, axes, len(shape)) if axes is not None else tuple(range(len(starts)))
    steps = _ints(xp, steps) or [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise KernelError(f"starts, ends, axes and steps differ in length ({len(starts)}, {len(ends)}, "
                          f"{len(axes)}, {len(steps)})")
    if 0 in steps:
        raise KernelError("a Slice step is 0")
    index = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        n = shape[a]
        s = max(-n - 1, min(s, n)) if st < 0 else max(-n, min(s, n))
        e = max(-n - 1, min(e, n))
        if st < 0 and e < -n:
            e = None
        index[a] = slice(s, e, st)
    return tuple(index)


@kernel("Slice", kind=K.MOVE)
def Slice(xp, data, starts, ends, axes=None, steps=None):
    return data[slice_index(xp, data.shape, starts, ends, axes, steps)]


@adjoint("Slice")
def _slice_vjp(xp, G, inputs, outputs, attrs, need):
    """Slices never overlap: put the gradient where the elements came from."""
    x, g = inputs[0], G[0]
    where = inputs[1:] or [attrs.get(k) for k in ("starts", "ends", "axes")]  # attributes before opset 10
    grad = xp.zeros((g.shape[0],) + x.shape, dtype=g.dtype)
    grad[(slice(None),) + slice_index(xp, x.shape, *where)] = g
    return [grad] + [None] * (len(inputs) - 1)


@kernel("Gather", kind=K.MOVE)
def Gather(xp, data, indices, axis=0):
    a = axis_index(axis, data.ndim)
    return xp.take(data, _wrap(xp, indices, data.shape[a]), axis=a)


def _wrap(xp, indices, n):
    """Negative indices count from the end (ONNX); out-of-range ones are an error."""
    indices = xp.asarray(indices).astype(np.int64, copy=False)
    if indices.size and (int(indices.max()) >= n or int(indices.min()) < -n):
        raise KernelError(f"index out of range for an axis of length {n}")
    return xp.where(indices < 0, indices + n, indices)


@kernel("GatherElements", since=11, kind=K.MOVE)
def GatherElements(xp, data, indices, axis=0):
    a = axis_index(axis, data.ndim)
    return xp.take_along_axis(data, _wrap(xp, indices, data.shape[a]), axis=a)


@kernel("GatherND", since=11, kind=K.MOVE)
def GatherND(xp, data, indices, batch_dims=0):
    indices = xp.asarray(indices).astype(np.int64)
    b = batch_dims
    batch_shape = data.shape[:b]
    nb = int(np.prod(batch_shape, dtype=np.int64))
    k = indices.shape[-1]
    d = data.reshape((nb,) + data.shape[b:])
    ind = indices.reshape((nb, math.prod(indices.shape[b:-1]), k))
    ind = xp.where(ind < 0, ind + xp.asarray(d.shape[1:1 + k]), ind)
    rows = xp.arange(nb)[:, None]
    out = d[(rows,) + tuple(ind[..., j] for j in range(k))]
    return out.reshape(indices.shape[:-1] + data.shape[b + k:])


@kernel("ScatterND", since=11, kind=K.MOVE)
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


@kernel("Expand", since=8, kind=K.MOVE)
def Expand(xp, x, shape):
    shape = _ints(xp, shape)
    target = np.broadcast_shapes(x.shape, tuple(shape))
    return xp.broadcast_to(x, target)


@adjoint("Expand")
def _expand_vjp(xp, G, inputs, outputs, attrs, need):
    return [unbroadcast(xp, G[0], inputs[0].shape), None]


@kernel("Tile", since=6, kind=K.MOVE)
def Tile(xp, x, repeats):
    reps = _ints(xp, repeats)
    if len(reps) != x.ndim or min(reps, default=0) < 0:
        raise KernelError(f"repeats {reps} must give one non-negative count per axis of the rank-{x.ndim} input")
    return xp.tile(x, reps)


@kernel("Pad", since=2, kind=K.MOVE)
def Pad(xp, data, pads, constant_value=None, axes=None, mode="constant", value=0.0):
    pads = _ints(xp, pads)
    axes = axes_indices(xp, axes, data.ndim) if axes is not None else tuple(range(data.ndim))
    half = len(axes)
    if len(pads) != 2 * half:
        raise KernelError(f"pads has {len(pads)} entries; {2 * half} (begin and end of {half} axes) are needed")
    width = [(0, 0)] * data.ndim
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + half])
    if any(lo < 0 or hi < 0 for lo, hi in width):  # negative pads crop
        index = tuple(slice(max(-lo, 0), data.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(width))
        data = data[index]
        width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    if mode == "constant":
        fill = value if constant_value is None else constant_value
        fill = fill.item() if hasattr(fill, "item") and getattr(fill, "size", 1) == 1 else fill
        return xp.pad(data, width, mode="constant", constant_values=fill)
    if mode not in ("reflect", "edge", "wrap"):
        raise KernelError(f"Pad mode {mode!r}: ONNX knows 'constant', 'reflect', 'edge', 'wrap'")
    for a, (lo, hi) in enumerate(width):
        if (lo or hi) and (data.shape[a] == 0 or mode == "reflect" and max(lo, hi) >= data.shape[a]):
            raise KernelError(f"Pad mode {mode!r}: pads {lo, hi} on axis {a} of length {data.shape[a]} "
                              f"{'need a non-empty axis' if not data.shape[a] else 'must be smaller than the axis'}")
    return xp.pad(data, width, mode=mode)


def _decode_type(key: str):
    """Attribute ``key`` holds an ONNX element type: the numpy dtype, under the float policy."""
    def decode(attrs, policy, node):
        if key in attrs:
            attrs[key] = under_policy(numpy_dtype(attrs[key], node.label()), policy)
        return attrs
    return decode


def _decode_value(attrs, policy, node):
    """Constant / ConstantOfShape: the value tensor under the float policy; Constant's float scalars too."""
    value = attrs.get("value")
    if isinstance(value, np.ndarray):
        attrs["value"] = value.astype(under_policy(value.dtype, policy))
    if node.op_type == "Constant":
        attrs["_float"] = policy if policy is not None else np.float32
    return attrs


@kernel("Cast", since=6, kind=K.CAST, output_is_float=lambda attrs: is_float(attrs["to"]),
        decode_attrs=_decode_type("to"))
def Cast(xp, x, to, saturate=1, round_mode="up"):
    """ONNX Cast (``reflrp.dtypes.cast``): float8 saturates unless ``saturate=0``."""
    return cast(x, to, saturate, round_mode)


@adjoint("Cast")
def _cast_vjp(xp, G, inputs, outputs, attrs, need):
    return [G[0]]


@kernel("CastLike", since=15, kind=K.CAST)
def CastLike(xp, x, like, saturate=1, round_mode="up"):
    return cast(x, like.dtype, saturate, round_mode)


@adjoint("CastLike")
def _castlike_vjp(xp, G, inputs, outputs, attrs, need):
    return [G[0], None]


@kernel("Constant", kind=K.CONSTANT, decode_attrs=_decode_value)
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


@kernel("ConstantOfShape", since=9, kind=K.CONSTANT, decode_attrs=_decode_value)
def ConstantOfShape(xp, shape, value=None):
    if value is None:
        value = np.zeros(1, dtype=np.float32)
    return xp.full(tuple(_ints(xp, shape)), value.reshape(-1)[0], dtype=value.dtype)


@kernel("NonZero", since=9, kind=K.CONSTANT)
def NonZero(xp, x):
    """The indices of the non-zero elements, one row per axis, in row-major order (int64, shape (rank, count));
    a scalar is read as a 1-element vector, as onnxruntime does."""
    return xp.asarray(xp.nonzero(xp.reshape(x, (1,)) if x.ndim == 0 else x), dtype=np.int64).reshape(max(x.ndim, 1), -1)


@kernel("Range", since=11, kind=K.CONSTANT)
def Range(xp, start, limit, delta, stash_type=1):
    """``start + i * delta`` for ``i < max(ceil((limit - start) / delta), 0)``, computed in float32 for
    float16/bfloat16 (``stash_type`` 1, opset 27) and in the input type otherwise."""
    dtype = start.dtype
    work = np.dtype(np.float32) if dtype.itemsize < 4 and is_float(dtype) and stash_type == 1 else dtype
    start, limit, delta = (v.astype(work) for v in (start, limit, delta))
    if not delta.item():
        raise KernelError("Range delta is 0")
    n = max(int(np.ceil((float(limit.item()) - float(start.item())) / float(delta.item()))), 0)
    return (start + xp.arange(n).astype(work) * delta).astype(dtype, copy=False)


@kernel("EyeLike", since=9, kind=K.CONSTANT, decode_attrs=_decode_type("dtype"))
def EyeLike(xp, x, dtype=None, k=0):
    return xp.eye(x.shape[0], x.shape[1], k=k, dtype=dtype if dtype is not None else x.dtype)


@kernel("Trilu", since=14, kind=K.MOVE)
def Trilu(xp, x, k=None, upper=1):
    k = int(k.item()) if k is not None else 0
    return xp.triu(x, k) if upper else xp.tril(x, k)


@kernel("CumSum", since=11, kind=K.LINEAR)
def CumSum(xp, x, axis, exclusive=0, reverse=0):
    a = axis_index(axis, x.ndim)
    if reverse:
        x = xp.flip(x, a)
    out = xp.cumsum(x, axis=a, dtype=x.dtype)
    if exclusive:  # shifted one place along the axis, a 0 first
        shifted = xp.zeros_like(out)
        head = tuple(slice(1, None) if i == a else slice(None) for i in range(x.ndim))
        body = tuple(slice(0, max(x.shape[a] - 1, 0)) if i == a else slice(None) for i in range(x.ndim))
        shifted[head] = out[body]
        out = shifted
    return xp.flip(out, a) if reverse else out


@adjoint("CumSum")
def _cumsum_vjp(xp, G, inputs, outputs, attrs, need):
    """The adjoint of a (reverse, exclusive) cumulative sum is the opposite-direction one."""
    x = inputs[0]
    flipped = {**attrs, "reverse": 0 if attrs.get("reverse", 0) else 1}
    axis = xp.asarray(1 + int(inputs[1].item()) % x.ndim)
    return [CumSum(xp, G[0], axis, flipped.get("exclusive", 0), flipped["reverse"]), None]


@kernel("OneHot", since=9, kind=K.CONSTANT)
def OneHot(xp, indices, depth, values, axis=-1):
    """``axis`` indexes the output (rank ``indices.ndim + 1``); indices outside ``-depth..depth-1``
    give an all-off row."""
    d = int(depth.item())
    ind = xp.asarray(indices).astype(np.int64)
    ind = xp.where(ind < 0, ind + d, ind)
    hot = xp.expand_dims(ind, -1) == xp.arange(d)
    hot = xp.moveaxis(hot, -1, axis_index(axis, ind.ndim + 1))
    return xp.where(hot, values[1], values[0])


@kernel("ArgMax", kind=K.CONSTANT)
def ArgMax(xp, data, axis=0, keepdims=1, select_last_index=0):
    return _arg(xp, xp.argmax, data, axis, keepdims, select_last_index)


@kernel("ArgMin", kind=K.CONSTANT)
def ArgMin(xp, data, axis=0, keepdims=1, select_last_index=0):
    return _arg(xp, xp.argmin, data, axis, keepdims, select_last_index)


def _arg(xp, fn, data, axis, keepdims, last):
    axis = axis_index(axis, data.ndim)
    if last:
        out = data.shape[axis] - 1 - fn(xp.flip(data, axis), axis=axis)
    else:
        out = fn(data, axis=axis)
    out = out.astype(np.int64)
    return xp.expand_dims(out, axis) if keepdims else out


# ---- adjoints computed by labelling: the exact adjoint of any data-movement kernel ----

def labelled_vjp(kernel_fn, data_inputs=None):
    """The adjoint of a data movement, read off the kernel itself: run it on element labels (1-based;
    0 marks output elements that come from no input, such as fill values), then scatter-add each
    output element's gradient to the element it was copied from. ``data_inputs``: the inputs that
    carry values (default: every float input); the others (indices, pads, repeats) pass unchanged."""

    def vjp(xp, G, inputs, outputs, attrs, need):
        data = [i for i, x in enumerate(inputs) if x is not None and (
            i in data_inputs if data_inputs is not None else x.dtype.kind == "f")]
        args, offsets, next_label = list(inputs), {}, 1
        for i in data:
            offsets[i] = next_label
            args[i] = xp.arange(next_label, next_label + inputs[i].size, dtype=np.int64).reshape(inputs[i].shape)
            next_label += inputs[i].size
        labelled = dict(attrs)
        if "value" in labelled:  # Pad before opset 11: the fill value is an attribute, not a labelled input
            labelled["value"] = 0
        out = kernel_fn(xp, *args, **labelled)
        out = out if isinstance(out, tuple) else (out,)
        k = next(g.shape[0] for g in G if g is not None)
        ids = xp.concatenate([o.reshape(-1) for o, g in zip(out, G) if g is not None])
        weights = xp.concatenate([g.reshape(k, math.prod(g.shape[1:])) for g in G if g is not None], axis=1)
        shifted = (ids[None, :] + next_label * xp.arange(k)[:, None]).reshape(-1)
        flat = float64_bincount(xp, shifted, weights.reshape(-1), k * next_label).reshape(k, next_label)
        dtype = next(g.dtype for g in G if g is not None)
        grads = [None] * len(inputs)
        for i in data:
            if need[i]:
                lo = offsets[i]
                grads[i] = flat[:, lo:lo + inputs[i].size].reshape((k,) + inputs[i].shape).astype(dtype)
        return grads

    return vjp


def _register_labelled(op: str, fn, data_inputs=None):
    adjoint(op)(labelled_vjp(fn, data_inputs))


for _op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
    adjoint(_op)(_relayout_vjp)
_register_labelled("Gather", Gather, (0,))
_register_labelled("GatherElements", GatherElements, (0,))
_register_labelled("GatherND", GatherND, (0,))
_register_labelled("Tile", Tile, (0,))
_register_labelled("Pad", Pad, (0, 2))
_register_labelled("Trilu", Trilu, (0,))


@adjoint("ScatterND")
def _scatternd_vjp(xp, G, inputs, outputs, attrs, need):
    """reduction='none' is a data movement (updates overwrite data); 'add' is a sum; others have none."""
    reduction = attrs.get("reduction", "none")
    if reduction == "none":
        return labelled_vjp(ScatterND, (0, 2))(xp, G, inputs, outputs, attrs, need)
    if reduction != "add":
        raise UnsupportedOpError(f"ScatterND with reduction={reduction!r} has no adjoint in reflrp")
    g = G[0]
    idx = tuple(xp.moveaxis(xp.asarray(inputs[1]), -1, 0))
    return [g if need[0] else None, None, g[(slice(None),) + idx] if need[2] else None]


# ---- interventions (reflrp.interventions): a user function applied to a tensor ----

@kernel("Apply", kind=K.CAST, domain="reflrp")
def Apply(xp, x, fn=None, tensor=""):
    from ..interventions import apply_function
    return apply_function(xp, x, fn, tensor)


@adjoint("Apply")
def _apply_vjp(xp, G, inputs, outputs, attrs, need):
    """Treated as the identity (reflrp cannot differentiate a user function)."""
    return [G[0]]
