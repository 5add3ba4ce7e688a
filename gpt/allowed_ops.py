"""The ATen operators a scored graph may call: an allow-list, not a deny-list.

The scorer runs a genome's graph in its own process, next to the scoring plan's windows
and targets. An operator whose kernel skips a check (a view built from sizes and strides it
never compares with the storage, an index it never bounds) turns a graph into a reader of
the scorer's memory; the red team found one (`aten._reshape_alias`, 2026-12-04) among the
roughly 2,500 operators torch has. So no operator is trusted by default: only those below,
the ordinary pieces of a language model (the ops torch.export writes for nn layers, tensor
arithmetic, reductions, views and indexing), each of which validates its arguments. Left
out on purpose: anything named unsafe, sparse, nested, quantized or fused-foreach tensors,
raw strided views (`as_strided`, `_reshape_alias`), file and terminal I/O, and ops no
language model needs. An in-place form (`add_`) is allowed where its functional form is:
the scorer functionalizes a graph that writes before it runs it.

A genome whose graph needs an op that is not here gets `failed: bad_artifact` naming the op.
"""
from __future__ import annotations

ELEMENTWISE = {
    "abs", "neg", "positive", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
    "square", "reciprocal", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh",
    "acosh", "atanh", "sigmoid", "logit", "erf", "erfc", "erfinv", "sign", "sgn", "signbit", "floor", "ceil",
    "round", "trunc", "frac", "clamp", "clamp_min", "clamp_max", "clip", "nan_to_num", "isnan", "isinf",
    "isfinite", "lgamma", "digamma", "sinc", "xlogy", "add", "sub", "rsub", "mul", "div", "true_divide",
    "floor_divide", "remainder", "fmod", "pow", "float_power", "atan2", "maximum", "minimum", "fmax", "fmin",
    "hypot", "copysign", "lerp", "addcmul", "addcdiv", "logaddexp", "logaddexp2", "where", "masked_fill",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "__and__", "__or__", "__xor__",
}
ACTIVATIONS = {
    "relu", "relu6", "gelu", "silu", "mish", "elu", "selu", "celu", "leaky_relu", "hardtanh", "hardsigmoid",
    "hardswish", "softplus", "softshrink", "hardshrink", "threshold", "log_sigmoid", "log_sigmoid_forward",
    "prelu", "_prelu_kernel", "glu", "softmax", "_softmax", "log_softmax", "_log_softmax",
}
REDUCTIONS = {
    "sum", "mean", "prod", "amax", "amin", "max", "min", "aminmax", "argmax", "argmin", "var", "std",
    "var_mean", "std_mean", "logsumexp", "norm", "linalg_vector_norm", "cumsum", "cumprod", "cummax", "cummin",
    "logcumsumexp", "all", "any", "count_nonzero", "topk", "sort", "argsort",
}
LINEAR_ALGEBRA = {
    "linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "outer",
    "einsum", "bilinear", "tensordot",
}
LAYERS = {
    "embedding", "layer_norm", "native_layer_norm", "rms_norm", "group_norm", "native_group_norm", "batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "instance_norm", "dropout", "native_dropout", "feature_dropout",
    # only the public entry, which checks Q, K and V against each other: its fused kernels do not, and a
    # red-team graph read the scorer's heap through _scaled_dot_product_flash_attention_for_cpu (helper-20)
    "scaled_dot_product_attention", "conv1d", "conv2d", "convolution", "_convolution", "pad",
    "constant_pad_nd", "reflection_pad1d", "replication_pad1d", "avg_pool1d", "max_pool1d", "adaptive_avg_pool1d",
    "one_hot", "cosine_similarity", "upsample_nearest1d",
}
SHAPES = {  # views and copies whose sizes are checked against the tensor they come from
    "view", "view_as", "reshape", "reshape_as", "_unsafe_view", "permute", "transpose", "t", "expand", "expand_as",
    "unsqueeze", "squeeze", "flatten", "unflatten", "slice", "select", "narrow", "split", "split_with_sizes",
    "chunk", "unbind", "contiguous", "clone", "alias", "detach", "flip", "roll", "repeat", "repeat_interleave",
    "tile", "cat", "concat", "concatenate", "stack", "movedim", "swapaxes", "swapdims", "diagonal", "tril",
    "triu", "to", "_to_copy", "type_as", "copy", "lift_fresh_copy", "fill", "zero", "numpy_T", "mT", "mH",
    "matrix_H", "adjoint", "view_as_complex", "view_as_real", "polar", "complex", "real", "imag", "conj",
    "resolve_conj", "resolve_neg",
}
INDEXING = {  # every index is bounds-checked by the kernel
    "index", "index_select", "gather", "take_along_dim", "scatter", "scatter_add", "scatter_reduce",
    "index_add", "index_copy", "index_fill", "index_put", "masked_scatter",
    "slice_scatter", "select_scatter", "diagonal_scatter",  # what functionalization makes of writes into views
}
CREATION = {  # new memory is filled by the scorer (fill_uninitialized_memory), so `empty` leaks nothing
    "arange", "zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like", "empty_like",
    "new_zeros", "new_ones", "new_full", "new_empty", "scalar_tensor", "linspace", "eye", "rand", "randn",
    "rand_like", "randn_like", "bernoulli",
}
CHECKS = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_size", "sym_numel", "sym_stride",
          "sym_storage_offset", "_local_scalar_dense", "sym_constrain_range_for_size", "sym_constrain_range"}

ALLOWED_OPS = frozenset(ELEMENTWISE | ACTIVATIONS | REDUCTIONS | LINEAR_ALGEBRA | LAYERS | SHAPES | INDEXING
                        | CREATION | CHECKS)


# Layer kernels run behind a check on the real tensors (gpt.artifact wraps each call), since program.json's
# shapes and strides are the genome's word. Every tensor argument is handed over dense: the fused kernels read
# a per-channel tensor as an array from its first element, so an expanded (stride-0) one-element view passed
# to native_group_norm read the scorer's heap (red team, 2026-12-06). The ones below also index their
# per-channel tensors by the input's channel count without comparing the two (a one-element running_mean
# read past its end), so those get one value per channel or a refusal. The public batch_norm and group_norm
# check both themselves; these internal forms, which torch.export writes, do not.
PER_CHANNEL_ARGUMENTS = {
    "_native_batch_norm_legit_no_training": ("weight", "bias", "running_mean", "running_var"),
    "_native_batch_norm_legit_functional": ("weight", "bias", "running_mean", "running_var"),
    "native_group_norm": ("weight", "bias"),
}


def checked(op):
    """`op` (an OpOverload), or for a layer op a function that first hands each tensor argument over dense
    (a no-op for one that is) and requires each per-channel argument to hold one value per input channel."""
    name = op._schema.name.partition("::")[2]
    if name not in LAYERS:
        return op
    per_channel = PER_CHANNEL_ARGUMENTS.get(name, ())
    arguments = [a.name for a in op._schema.arguments]

    def run(*args, **kwargs):
        import torch

        bound = {k: v.contiguous() if isinstance(v, torch.Tensor) else v
                 for k, v in dict(zip(arguments, args), **kwargs).items()}
        if per_channel:
            channels = bound["input"].shape[1] if bound["input"].dim() > 1 else 1
            if bound.get("C", channels) != channels:
                raise RuntimeError(f"{op}: C is {bound['C']}, the input has {channels} channels")
            for arg in per_channel:
                value = bound.get(arg)
                if value is not None and tuple(value.shape) != (channels,):
                    raise RuntimeError(f"{op}: {arg} has shape {tuple(value.shape)}, the input has {channels} channels")
        return op(**bound)

    run.__name__ = run.__qualname__ = f"checked_{name}"
    return run


def is_allowed(name: str) -> bool:
    """Whether the ATen operator `name` (the packet, without overload) may appear in a scored graph."""
    if name in ALLOWED_OPS:
        return True
    return name.endswith("_") and not name.endswith("__") and name[:-1] in ALLOWED_OPS  # in-place forms
