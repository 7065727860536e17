"""The torch equivalent of a conformance case's ONNX graph (tools/lxt_adapter.py, tools/zennit_adapter.py).

``run_graph(model, feeds, apply)`` evaluates the graph node by node in torch float64. ``apply(node, fn,
args, env)`` returns a node's outputs; the default calls ``fn(*args)``, the op's torch function, and an
adapter puts its backend's rule around it (an LXT primitive, an explicit-mode rule function). Only the
ops of the suite's node cases are here, each written from the ONNX operator spec.
"""
from __future__ import annotations

import math
from functools import reduce

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _ints(t) -> list:
    return [int(v) for v in t.detach().reshape(-1).tolist()]


def _axes(a, t, args, i):
    """Reduction axes from input ``i`` (opset 18) or the ``axes`` attribute; None: all."""
    if len(args) > i and args[i] is not None:
        return [ax % t.dim() for ax in _ints(args[i])]
    return [ax % t.dim() for ax in a["axes"]] if "axes" in a else None


def _reduce(fn):
    def op(a, x, *args):
        axes = _axes(a, x, args, 0)
        if axes is None or not axes:
            if axes == [] and a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=axes, keepdim=bool(a.get("keepdims", 1)))
    return op


def _pads(a, d):
    pads = list(a.get("pads", [0] * 2 * d))
    if pads[:d] != pads[d:]:
        raise NotImplementedError(f"asymmetric pads {pads}")
    return pads[:d]


def _conv(a, x, w, b=None):
    d = x.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    return conv(x, w, b, stride=a.get("strides", [1] * d), padding=_pads(a, d), dilation=a.get("dilations", [1] * d),
                groups=a.get("group", 1))


def _conv_transpose(a, x, w, b=None):
    d = x.dim() - 2
    if "output_shape" in a or _s(a.get("auto_pad", "NOTSET")) != "NOTSET":
        raise NotImplementedError("ConvTranspose with output_shape or auto_pad")
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[d]
    return conv(x, w, b, stride=a.get("strides", [1] * d), padding=_pads(a, d),
                output_padding=a.get("output_padding", [0] * d), groups=a.get("group", 1),
                dilation=a.get("dilations", [1] * d))


def _gemm(a, A, B, C=None):
    A = A.transpose(0, 1) if a.get("transA", 0) else A
    B = B.transpose(0, 1) if a.get("transB", 0) else B
    y = a.get("alpha", 1.0) * (A @ B)
    return y if C is None else y + a.get("beta", 1.0) * C


def _batchnorm(a, x, s, b, m, v):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - m.reshape(shape)) / torch.sqrt(v.reshape(shape) + a.get("epsilon", 1e-5)) * s.reshape(shape) \
        + b.reshape(shape)


def layer_norm(a, x, gamma, beta=None):
    dims = list(range(a.get("axis", -1) % x.dim(), x.dim()))
    mu = x.mean(dim=dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mu) / torch.sqrt(var + a.get("epsilon", 1e-5)) * gamma
    return y if beta is None else y + beta


def _rms_norm(a, x, gamma):
    dims = list(range(a.get("axis", -1) % x.dim(), x.dim()))
    return x / torch.sqrt((x * x).mean(dim=dims, keepdim=True) + a.get("epsilon", 1e-5)) * gamma


def _reshape(a, x, shape):
    dims = [x.shape[i] if d == 0 and not a.get("allowzero", 0) else d for i, d in enumerate(_ints(shape))]
    return x.reshape(dims)


def _slice(a, x, starts, ends, axes=None, steps=None):
    axes = _ints(axes) if axes is not None else list(range(len(_ints(starts))))
    steps = _ints(steps) if steps is not None else [1] * len(axes)
    for st, en, ax, sp in zip(_ints(starts), _ints(ends), axes, steps):
        idx = list(range(*slice(st, en, sp).indices(x.shape[ax])))
        x = torch.index_select(x, ax % x.dim(), torch.tensor(idx, dtype=torch.long))
    return x


def _gather(a, x, ind):
    ax = a.get("axis", 0) % x.dim()
    i = torch.where(ind < 0, ind + x.shape[ax], ind).long()
    out = torch.index_select(x, ax, i.reshape(-1))
    return out.reshape(tuple(x.shape[:ax]) + tuple(i.shape) + tuple(x.shape[ax + 1:]))


def _split(a, x, split=None):
    ax = a.get("axis", 0) % x.dim()
    sizes = _ints(split) if split is not None else [x.shape[ax] // a["num_outputs"]] * a["num_outputs"]
    return tuple(torch.split(x, sizes, dim=ax))


def _pad(a, x, pads, value=None, axes=None):
    if _s(a.get("mode", "constant")) != "constant":
        raise NotImplementedError("Pad mode " + _s(a["mode"]))
    p = _ints(pads)
    axes = [ax % x.dim() for ax in _ints(axes)] if axes is not None else list(range(x.dim()))
    n = len(axes)
    width = {ax: (p[i], p[i + n]) for i, ax in enumerate(axes)}
    flat = [w for ax in reversed(range(x.dim())) for w in width.get(ax, (0, 0))]
    return F.pad(x, flat, value=0.0 if value is None else float(value))


def _unsqueeze(a, x, axes):
    n = x.dim() + len(_ints(axes))
    for ax in sorted(v % n for v in _ints(axes)):
        x = x.unsqueeze(ax)
    return x


def _maxpool(a, x):
    d = x.dim() - 2
    pool = {1: F.max_pool1d, 2: F.max_pool2d}[d]
    return pool(x, a["kernel_shape"], stride=a.get("strides", [1] * d), padding=_pads(a, d),
                ceil_mode=bool(a.get("ceil_mode", 0)))


def _avgpool(a, x):
    d = x.dim() - 2
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d}[d]
    return pool(x, a["kernel_shape"], stride=a.get("strides", [1] * d), padding=_pads(a, d),
                ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=bool(a.get("count_include_pad", 0)))


def _trilu(a, x, k=None):
    k = _ints(k)[0] if k is not None else 0
    return torch.triu(x, k) if a.get("upper", 1) else torch.tril(x, k)


# ------------------------------------------------------------------ the opset-23 fused ops

def attention_heads(a, Q, K, V):
    """(q, k, v) as (B, heads, S, d), the 3-D inputs split into ``q_num_heads`` / ``kv_num_heads``."""
    def heads(t, h):
        return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2) if t.dim() == 3 else t
    return heads(Q, a.get("q_num_heads")), heads(K, a.get("kv_num_heads")), heads(V, a.get("kv_num_heads"))


def attention_bias(a, mask, L, S):
    """The additive bias (L, S): a float mask, a bool mask as 0 / -inf, plus the causal -inf."""
    bias = torch.zeros((L, S), dtype=torch.float64)
    if mask is not None:
        bias = bias + (torch.where(mask, 0.0, -math.inf) if mask.dtype == torch.bool else mask)
    if a.get("is_causal", 0):
        bias = bias + torch.where(torch.ones((L, S), dtype=torch.bool).tril(), 0.0, -math.inf)
    return bias


def attention_scale(a, d: int) -> float:
    """The factor applied to q and to k: ``sqrt(scale)``, ``scale`` float32 in the protobuf (1/sqrt(d))."""
    return math.sqrt(float(np.float32(a["scale"])) if "scale" in a else 1 / math.sqrt(d))


def repeat_kv(t, reps: int):
    """GQA: each key/value head repeated for its ``reps`` query heads."""
    return t if reps == 1 else t.repeat_interleave(reps, dim=1)


def attention_merge(a, y4, Q):
    return y4.transpose(1, 2).reshape(Q.shape[0], Q.shape[1], -1) if Q.dim() == 3 else y4


def _attention(a, Q, K, V, mask=None, *rest):
    if any(r is not None for r in rest) or a.get("softcap", 0.0):
        raise NotImplementedError("Attention with a past cache or softcap")
    q, k, v = attention_heads(a, Q, K, V)
    r = attention_scale(a, q.shape[-1])
    k, v = repeat_kv(k * r, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    logits = (q * r) @ k.transpose(-1, -2) + attention_bias(a, mask, q.shape[2], k.shape[2])
    return attention_merge(a, torch.softmax(logits, -1) @ v, Q)


def rotary(a, X, cos, sin, pos=None):
    """RotaryEmbedding per the spec: (B, H, S, D) or (B, S, H*D); halves or interleaved pairs rotated by
    the gathered cos/sin; features past ``rotary_embedding_dim`` unchanged."""
    heads = a.get("num_heads", 0)
    x = X.transpose(1, 2) if X.dim() == 4 else X.reshape(X.shape[0], X.shape[1], heads, -1)
    if pos is not None:
        cos, sin = cos[pos.long()], sin[pos.long()]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rot = a.get("rotary_embedding_dim", 0) or x.shape[-1]
    xr, rest = x[..., :rot], x[..., rot:]
    if a.get("interleaved", 0):
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([cos * x1 - sin * x2, sin * x1 + cos * x2], dim=-1).reshape(xr.shape)
    else:
        x1, x2 = xr[..., :rot // 2], xr[..., rot // 2:]
        out = torch.cat([cos * x1 - sin * x2, sin * x1 + cos * x2], dim=-1)
    y = torch.cat([out, rest], dim=-1)
    return y.transpose(1, 2) if X.dim() == 4 else y.reshape(X.shape)


OPS = {
    "MatMul": lambda a, x, y: torch.matmul(x, y), "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv_transpose,
    "Einsum": lambda a, *xs: torch.einsum(_s(a["equation"]), *xs),
    "Add": lambda a, x, y: x + y, "Sub": lambda a, x, y: x - y, "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y, "Pow": lambda a, x, y: torch.pow(x, y), "Sum": lambda a, *xs: reduce(torch.add, xs),
    "ReduceSum": _reduce(torch.sum), "ReduceMean": _reduce(torch.mean), "ReduceMax": _reduce(torch.amax),
    "AveragePool": _avgpool, "GlobalAveragePool": lambda a, x: x.mean(dim=list(range(2, x.dim())), keepdim=True),
    "MaxPool": _maxpool, "BatchNormalization": _batchnorm, "LayerNormalization": layer_norm,
    "RMSNormalization": _rms_norm, "Softmax": lambda a, x: torch.softmax(x, a.get("axis", -1)),
    "Sigmoid": lambda a, x: torch.sigmoid(x), "Tanh": lambda a, x: torch.tanh(x), "Relu": lambda a, x: torch.relu(x),
    "Erf": lambda a, x: torch.erf(x), "Exp": lambda a, x: torch.exp(x), "Softplus": lambda a, x: F.softplus(x),
    "Neg": lambda a, x: -x, "Sqrt": lambda a, x: torch.sqrt(x), "Reciprocal": lambda a, x: 1 / x,
    "Identity": lambda a, x: x, "Cast": lambda a, x: x.double(),
    "Gelu": lambda a, x: F.gelu(x, approximate=_s(a.get("approximate", "none"))),
    "LeakyRelu": lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Reshape": _reshape, "Transpose": lambda a, x: x.permute(a.get("perm", list(range(x.dim()))[::-1])),
    "Slice": _slice, "Gather": _gather, "Concat": lambda a, *xs: torch.cat(xs, dim=a["axis"]), "Split": _split,
    "Expand": lambda a, x, s: torch.broadcast_to(x, np.broadcast_shapes(tuple(x.shape), tuple(_ints(s)))),
    "Tile": lambda a, x, r: x.repeat(*_ints(r)), "Pad": _pad, "Unsqueeze": _unsqueeze, "Trilu": _trilu,
    "Where": lambda a, c, x, y: torch.where(c, x, y), "Max": lambda a, *xs: reduce(torch.maximum, xs),
    "Min": lambda a, *xs: reduce(torch.minimum, xs), "Attention": _attention, "RotaryEmbedding": rotary,
}


def op_fn(node):
    """The node's torch function of its inputs; it returns a tuple of outputs."""
    if node.op_type not in OPS:
        raise NotImplementedError(f"no torch translation of {node.op_type}")
    a, f = attributes(node), OPS[node.op_type]

    def fn(*args):
        out = f(a, *args)
        return out if isinstance(out, tuple) else (out,)
    return fn


def plain(node, fn, args, env):
    return fn(*args)


def constants(model) -> dict:
    """The initializers as torch tensors (float64 floats, int64 ints, bool masks)."""
    out = {}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        out[t.name] = torch.from_numpy(np.array(a, dtype=np.float64 if a.dtype.kind == "f" else a.dtype))
    return out


def run_nodes(nodes, env: dict, apply=plain) -> dict:
    """Evaluate ``nodes`` (topological order) on ``env`` (tensor name -> torch tensor); returns the env."""
    env = dict(env)
    for node in nodes:
        args = [env[i] if i else None for i in node.input]
        while args and args[-1] is None:
            args.pop()
        outs = apply(node, op_fn(node), args, env)
        env.update({o: v for o, v in zip(node.output, outs) if o})
    return env


def run_graph(model: onnx.ModelProto, feeds: dict, apply=plain) -> dict:
    return run_nodes(model.graph.node, {**constants(model), **feeds}, apply)


# ------------------------------------------------------------------ a conformance case's graph

class CaseGraph:
    """A case's graph in torch: the node specs by name, and the region each inner node belongs to."""

    def __init__(self, case):
        self.case = case
        self.model = onnx.load(str(case.model_path))
        self.specs = {n["name"]: n for n in case.nodes}
        self.eps = float(case.rule.get("epsilon") or 0.0)

    def spec(self, node) -> dict:
        return self.specs.get(node.name) or {"rule": None, "dynamic": [], "facts": {}}

    def region_fn(self, end, env):
        """The region ending at ``end`` as a function of its source (the inner nodes evaluated plainly)."""
        source = self.spec(end)["facts"]["source"]
        inner = [n for n in self.model.graph.node if self.spec(n)["facts"].get("region") == end.name] + [end]
        return source, lambda s: run_nodes(inner, {**env, source: s})[end.output[0]]


def dynamic_inputs(spec, args) -> list:
    """The positions of the node's dynamic inputs (from the case's plan)."""
    return [i for i, d in enumerate(spec["dynamic"]) if d and i < len(args) and args[i] is not None]


def with_arg(args, i, t) -> list:
    """``args`` with ``t`` at position ``i``."""
    return [t if j == i else a for j, a in enumerate(args)]


def held(args, keep, dyn) -> list:
    """``args`` with every dynamic operand but ``keep`` detached (held constant)."""
    return [a.detach() if j in dyn and j != keep else a for j, a in enumerate(args)]
