"""Tiny ONNX models for the rule tests and the conformance suite, built with ``onnx.helper``, and their
seeded random data.

Every float tensor is float64 (``TensorProto.DOUBLE``) so that a numpy oracle sees exactly the values
reflrp sees: no float32 rounding of data or weights (float *attributes* such as ``alpha`` or
``epsilon`` are float32 by the ONNX protobuf; the tests round them the same way).

Two entry points:

* :func:`graph_model` -- a few-node model from a list of nodes, the graph inputs (name -> shape),
  the constants (name -> array, stored as initializers) and the graph outputs.
* :func:`one_node_model` -- one node whose inputs are given in order, each either a graph input
  (by name, with its shape in ``dynamic``) or a constant (by name, with its value in ``consts``).
"""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEFAULT_OPSET = 18


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
         **attrs) -> onnx.NodeProto:
    """One ONNX node; the name defaults to the first output's name (tests look nodes up by it)."""
    return helper.make_node(op_type, list(inputs), list(outputs), name=name or f"{op_type}:{outputs[0]}", **attrs)


def _value_info(name: str, shape, elem_type=TensorProto.DOUBLE) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def graph_model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, Sequence[int]], outputs: Sequence[str],
                consts: Mapping[str, np.ndarray] | None = None, opset: int = DEFAULT_OPSET,
                input_types: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A model from ``nodes``.

    ``inputs``: graph input name -> shape (float64 unless ``input_types`` says otherwise).
    ``consts``: initializer name -> numpy array (its dtype decides the ONNX type: float64 -> DOUBLE,
    int64 -> INT64, bool -> BOOL). ``outputs``: graph output names (float64, shape left open).
    """
    input_types = dict(input_types or {})
    graph = helper.make_graph(
        list(nodes), "reflrp_oracle_case",
        [_value_info(n, s, input_types.get(n, TensorProto.DOUBLE)) for n, s in inputs.items()],
        [_value_info(n, None) for n in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), name=k) for k, v in (consts or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def one_node_model(op_type: str, order: Sequence[str], dynamic: Mapping[str, Sequence[int]],
                   consts: Mapping[str, np.ndarray] | None = None, n_outputs: int = 1, keep_outputs=None,
                   opset: int = DEFAULT_OPSET, name: str = "node", **attrs) -> onnx.ModelProto:
    """A model of one node named ``name``.

    ``order``: the node's inputs in order; each name is a graph input (listed in ``dynamic`` with its
    shape), a constant (listed in ``consts``) or ``""`` for an omitted optional input.
    Outputs are called ``y`` (one output) or ``y0, y1, ...``; ``keep_outputs`` picks which of them are
    graph outputs (default all), so an output can be left unused.
    """
    outs = ["y"] if n_outputs == 1 else [f"y{i}" for i in range(n_outputs)]
    keep = outs if keep_outputs is None else [outs[i] for i in keep_outputs]
    n = helper.make_node(op_type, list(order), outs, name=name, **attrs)
    return graph_model([n], dict(dynamic), keep, consts, opset)


def f32(v: float) -> float:
    """``v`` rounded to float32, as a float attribute of the protobuf holds it."""
    return float(np.float32(v))


def scalar(v) -> np.ndarray:
    """A float64 0-d constant."""
    return np.array(v, dtype=np.float64)


def ints(*v) -> np.ndarray:
    """An int64 1-d constant (0-d for ``ints()`` of nothing is not allowed: pass values)."""
    return np.array(v, dtype=np.int64)


def rng_for(case_id: str) -> np.random.Generator:
    """A generator seeded by the case id, so each case has its own fixed data."""
    return np.random.default_rng(zlib.crc32(case_id.encode()))


def rand(rng: np.random.Generator, shape, positive: bool = False) -> np.ndarray:
    """Standard normal data of ``shape``; ``positive``: ``|N(0, 1)| + 0.5``."""
    a = rng.standard_normal(shape)
    return np.abs(a) + 0.5 if positive else a


# ---------------------------------------------------------------- the decompositions exporters write

LN_EPS = f32(1e-5)  # a norm's epsilon attribute, as the protobuf holds it

SQRT2 = np.sqrt(2.0)
C_TANH = np.sqrt(2.0 / np.pi)

# Elementwise regions as exporters write them: ``f(h) -> (nodes, constants)`` from the source tensor ``h`` to
# the graph output ``y``; the region's end node is named ``end`` (a Mul by 0.5 after it: ``after``).


def silu_nodes(h):
    return [node("Sigmoid", [h], ["sg"]), node("Mul", [h, "sg"], ["y"], name="end")], {}


def erf_gelu_nodes(h):
    return [node("Div", [h, "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["a"]),
            node("Mul", [h, "a"], ["m"], name="end"), node("Mul", ["m", "half"], ["y"], name="after")], \
        {"sqrt2": scalar(SQRT2), "one": scalar(1.0), "half": scalar(0.5)}


def erf_gelu_half_first_nodes(h):
    return [node("Mul", [h, "half"], ["hh"]), node("Div", [h, "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]),
            node("Add", ["e", "one"], ["a"]), node("Mul", ["hh", "a"], ["y"], name="end")], \
        {"sqrt2": scalar(SQRT2), "one": scalar(1.0), "half": scalar(0.5)}


def tanh_gelu_nodes(h):
    return [node("Pow", [h, "three"], ["p3"]), node("Mul", ["p3", "k"], ["t1"]), node("Add", [h, "t1"], ["t2"]),
            node("Mul", ["t2", "c"], ["t3"]), node("Tanh", ["t3"], ["t4"]), node("Add", ["t4", "one"], ["t5"]),
            node("Mul", ["half", h], ["hh"]), node("Mul", ["hh", "t5"], ["y"], name="end")], \
        {"three": scalar(3.0), "k": scalar(0.044715), "c": scalar(C_TANH), "one": scalar(1.0),
         "half": scalar(0.5)}


def tanh_gelu_cube_by_mul_nodes(h):
    return [node("Mul", [h, h], ["p2"]), node("Mul", ["p2", h], ["p3"]), node("Mul", ["p3", "k"], ["t1"]),
            node("Add", [h, "t1"], ["t2"]), node("Mul", ["t2", "c"], ["t3"]), node("Tanh", ["t3"], ["t4"]),
            node("Add", ["one", "t4"], ["t5"]), node("Mul", [h, "t5"], ["m"], name="end"),
            node("Mul", ["m", "half"], ["y"], name="after")], \
        {"k": scalar(0.044715), "c": scalar(C_TANH), "one": scalar(1.0), "half": scalar(0.5)}


def quick_gelu_nodes(h):
    return [node("Mul", [h, "k"], ["t"]), node("Sigmoid", ["t"], ["sg"]),
            node("Mul", [h, "sg"], ["y"], name="end")], {"k": scalar(1.702)}


REGIONS = {"silu": silu_nodes, "erf-gelu": erf_gelu_nodes, "erf-gelu-half-first": erf_gelu_half_first_nodes,
           "tanh-gelu": tanh_gelu_nodes, "tanh-gelu-cube-by-mul": tanh_gelu_cube_by_mul_nodes,
           "quick-gelu": quick_gelu_nodes}


def layernorm_decomposed(shape, axes, gamma, beta):
    """LayerNorm as ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta."""
    return graph_model([
        node("ReduceMean", ["x", "axes"], ["mu"], keepdims=1), node("Sub", ["x", "mu"], ["d"], name="center"),
        node("Pow", ["d", "two"], ["d2"]), node("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
        node("Add", ["var", "eps"], ["ve"]), node("Sqrt", ["ve"], ["sd"]),
        node("Div", ["d", "sd"], ["n"], name="norm"),
        node("Mul", ["n", "gamma"], ["g"]), node("Add", ["g", "beta"], ["y"])],
        {"x": shape}, ["y"], {"axes": np.array(axes, dtype=np.int64), "two": scalar(2.0), "eps": scalar(LN_EPS),
                              "gamma": gamma, "beta": beta})


def rmsnorm_decomposed(div: bool) -> list:
    """RMSNorm as its nodes: Pow 2, ReduceMean, Add eps, Sqrt, then Div (``div``) or Reciprocal and Mul, Mul gamma
    (node ``norm`` the normalizer; constants two, axes, eps, gamma)."""
    tail = [node("Div", ["x", "sd"], ["n"], name="norm")] if div else \
        [node("Reciprocal", ["sd"], ["inv"]), node("Mul", ["x", "inv"], ["n"], name="norm")]
    return [node("Pow", ["x", "two"], ["x2"]), node("ReduceMean", ["x2", "axes"], ["ms"], keepdims=1),
            node("Add", ["ms", "eps"], ["me"]), node("Sqrt", ["me"], ["sd"])] + tail + \
        [node("Mul", ["n", "gamma"], ["y"])]
