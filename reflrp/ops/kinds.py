"""What sort of function an op is. The analysis decides relevance rules from these, never from op names.

========== =====================================================================================
kind       meaning
========== =====================================================================================
activation elementwise nonlinear function of one input (Relu, Exp, Gelu, Tanh, ...)
cast       elementwise copy that keeps the values (Cast, Identity, Dropout)
sum        signed sum of its inputs, broadcasting (Add, Sub, Sum)
product    elementwise product of its inputs (Mul)
quotient   elementwise quotient (Div)
elementwise other elementwise functions of several inputs (Pow, Mod, Mean, PRelu, Clip)
select     every output element is one input element, chosen by value or condition (Max, Min,
           Where, MaxPool, ReduceMax)
contraction multilinear in its operands (MatMul, Gemm, Conv, Einsum)
linear     affine in its one data input (ReduceSum, ReduceMean, AveragePool, BatchNormalization,
           Neg, CumSum)
move       data movement: each output element is a copy of one input element or a fill value
           (Reshape, Transpose, Slice, Gather, Concat, Split, Expand, Tile, Pad, Trilu, ...)
layernorm  normalization with a mean and a standard deviation (LayerNormalization)
rmsnorm    normalization by the root mean square (RMSNormalization)
softmax    Softmax
attention  the fused Attention op
rotary     the fused RotaryEmbedding op
nonlinear  differentiable, but no relevance rule is defined (LogSoftmax, ReduceL2, ...)
control    control flow that runs subgraphs (If, Loop, Scan): no adjoint, no relevance rule
constant   outputs carry no relevance: shapes, comparisons, logic, indices, constants
========== =====================================================================================
"""
from __future__ import annotations

ACTIVATION = "activation"
CAST = "cast"
SUM = "sum"
PRODUCT = "product"
QUOTIENT = "quotient"
ELEMENTWISE = "elementwise"
SELECT = "select"
CONTRACTION = "contraction"
LINEAR = "linear"
MOVE = "move"
LAYERNORM = "layernorm"
RMSNORM = "rmsnorm"
SOFTMAX = "softmax"
ATTENTION = "attention"
ROTARY = "rotary"
NONLINEAR = "nonlinear"
CONTROL = "control"
CONSTANT = "constant"

ALL = (ACTIVATION, CAST, SUM, PRODUCT, QUOTIENT, ELEMENTWISE, SELECT, CONTRACTION, LINEAR, MOVE, LAYERNORM,
       RMSNORM, SOFTMAX, ATTENTION, ROTARY, NONLINEAR, CONTROL, CONSTANT)
# kinds whose ops are elementwise unless a record says otherwise
ELEMENTWISE_KINDS = frozenset({ACTIVATION, CAST, SUM, PRODUCT, QUOTIENT, ELEMENTWISE})
