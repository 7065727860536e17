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
