"""The tests' ONNX builders live in reflrp (the conformance suite builds the same tiny models)."""
from reflrp.onnx_build import (DEFAULT_OPSET, f32, graph_model, ints, node, one_node_model, rand,  # noqa: F401
                               rng_for, scalar)
