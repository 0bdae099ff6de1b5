"""Graph rewrites that let XNNPACK take more of a program, and run it faster.

ExecuTorch hands XNNPACK only what its partitioner accepts; the rest runs on portable kernels
between delegate calls (single-threaded, unvectorised). The decoder's profile (ETDump, see
docs/executorch.md) showed where its time went; each rewrite here removes one cause:

- `bmm_matmul`: a batched `matmul` lowers to `expand_copy` + `view_copy` + `bmm`, and
  `expand_copy` is a real copy on a portable kernel even when nothing is broadcast. Equal-batch
  matmuls become one `bmm` on 3-D views. A matrix times a batch of matrices (`W @ X^T`, the
  image-side projections of `Attention.image_side`; EdgeSAM's resize `rows @ x`, 2-D by 4-D)
  becomes `(X^T @ W^T)^T`: one `mm` with the matrix as its weight, which XNNPACK runs as a
  fully-connected GEMM with weights packed once at load, where the batched form packed the
  4096-token operand on every call (or expanded `rows` per channel on a portable kernel). A
  batch of matrices times a matrix is the same `mm`. `gemm_matmul` (float graphs) also computes
  a `bmm` whose right operand is much larger than the rest (the hypernetwork's 4 x 65536 mask
  product) transposed, so the operand XNNPACK packs per call is the small one. A batch times a
  table broadcast over its leading dims (`(X..., s, m, k) @ (s, k, n)`: SAM ViT's
  relative-position terms) becomes one bmm over `s`, where the default decomposition expanded
  both operands on portable kernels.
- `infer_symbolic_reshapes`: XNNPACK's reshape takes one inferred (-1) dimension but no symbolic
  size, so a reshape to `(1, 5 + N, 8, 16)` stays portable; its one symbolic size becomes -1
  (the same shape).
- `merge_permutes`: a permute of a permute (also through a reshape to the same shape) becomes
  one permute, or none when the two restore the order (the attention's head split followed by
  the key transpose; the hypernetwork product's operand transposed by the graph and back by the
  rewrite);
  `linear_from_mm`: XNNPACK takes `mm(x, W^T)` only as `linear(x, W)`.
- `decompose_layer_norms`: XNNPACK has no LayerNorm node. A last-axis LayerNorm becomes mean and
  variance as a `linear` with a constant 1/C row, sub, mul, add and rsqrt, all delegated.
- `pooled_means` (every graph): a spatial mean written as a mean over W then over H (EdgeSAM's
  squeeze-excite) becomes 16 x 16 average pools and one mean over H and W, the forms XNNPACK
  takes; the split form ran on a portable kernel between delegate calls.
- `unbinds_as_slices`: an `unbind` (SAM ViT's q, k, v) as static slices and views; lowered as it
  was, each part became a portable squeeze.
- `lift_scalar_fulls`: the spelled-out tanh GELU's constants (`_tanh_gelu` in the target: they
  have the activation's rank, so XNNPACK's layout pass keeps EfficientViT-SAM's activations
  channels-last around them) are stored with the program instead of built by a portable `full`
  at every call.
- `drop_unused_constants`: a constant no node reads (the decoder's channels-first positional
  table, 4 MB) was still stored in the program.
- For the image encoders (static graphs, 2026-12-05; they ran every pattern below on portable
  kernels: MobileSAM's encoder 84 portable operator calls between 55 delegate calls):
  `channel_layer_norms` (EdgeSAM's channels-last LayerNorm2d in the channels-first form),
  `channel_means` (a mean over the channels of an NCHW map as a 1 x 1 convolution with a 1/C
  kernel), `split_as_slices` (q, k, v split from one projection as static slices), and
  `fold_constants` (ExecuTorch's constant propagation: a bias table gathered by a constant
  index is computed once); `bmm_matmul` and `decompose_layer_norms` apply to them as well.

`bmm_matmul` and `infer_symbolic_reshapes` give the same values bit for bit; the GEMM forms
sum in another order and the LayerNorm rewrite uses XNNPACK's rsqrt, so those agree with
PyTorch to float32 rounding (docs/executorch.md gives the measured differences).

The rewrites run in two phases (`gemm_forms`, then `rewrite_for_xnnpack`) so that int8 graphs
get them too: PT2E's XNNPACK quantizer quantizes linears, so the GEMM forms come before it (the
decoder's image-side projections and output upscaling, products with constant matrices, become
int8 linears instead of float batched products), and the LayerNorm decomposition after it (its
1/C row is a linear that must stay float).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

aten = torch.ops.aten

#: the right operand of a bmm is packed per call by XNNPACK; transpose the product when it is
#: this many times larger than the left operand and the output together
_PACKED_OPERAND_RATIO = 4


def bmm_matmul(a: torch.Tensor, b: torch.Tensor) -> Any:
    """`aten.matmul` of tensors with the same static batch dims as one bmm, without expand, and
    a matrix times a batch of matrices (or a batch times a matrix) as one `mm`; anything else
    (broadcasting, 2-D by 2-D, symbolic batch) keeps the default decomposition."""
    return _matmul(a, b, gemm=False)


def gemm_matmul(a: torch.Tensor, b: torch.Tensor) -> Any:
    """`bmm_matmul`, and a bmm with a large right operand computed transposed (see the module
    doc)."""
    return _matmul(a, b, gemm=True)


def _matmul(a: torch.Tensor, b: torch.Tensor, gemm: bool) -> Any:
    if a.dim() == 2 and b.dim() >= 3:  # A @ X -> (X^T @ A^T)^T: one mm, A packed once
        bt = b.transpose(-1, -2)
        out = torch.mm(bt.reshape(-1, bt.shape[-1]), a.t())
        return out.reshape(*bt.shape[:-1], a.shape[0]).transpose(-1, -2)
    if a.dim() >= 3 and b.dim() == 2:  # X @ W: one GEMM over all rows
        out = torch.mm(a.reshape(-1, a.shape[-1]), b)
        return out.reshape(*a.shape[:-1], b.shape[-1])
    if (
        a.dim() > b.dim() == 3
        and _static(a.shape)
        and _static(b.shape)
        and a.shape[-3] == b.shape[0]
    ):
        return _matmul_over_last_batch_dim(a, b)
    if a.dim() < 3 or a.dim() != b.dim():
        return NotImplemented
    batch = 1
    for da, db in zip(a.shape[:-2], b.shape[:-2], strict=True):
        if not (isinstance(da, int) and isinstance(db, int)) or da != db:
            return NotImplemented
        batch *= da
    a3 = a.reshape(batch, a.shape[-2], a.shape[-1])
    b3 = b.reshape(batch, *b.shape[-2:])
    sizes = [a.shape[-2] * a.shape[-1], b.shape[-2] * b.shape[-1], a.shape[-2] * b.shape[-1]]
    if gemm and _static(sizes) and sizes[1] > _PACKED_OPERAND_RATIO * (sizes[0] + sizes[2]):
        out = torch.bmm(b3.transpose(1, 2), a3.transpose(1, 2)).transpose(1, 2)
    else:
        out = torch.bmm(a3, b3)
    return out.reshape(*a.shape[:-1], b.shape[-1])


def _static(shape: Any) -> bool:
    return all(isinstance(d, int) for d in shape)


def _matmul_over_last_batch_dim(a: torch.Tensor, b: torch.Tensor) -> Any:
    """(X..., s, m, k) @ (s, k, n): `b` broadcast over X (SAM ViT's relative-position terms,
    queries against the (s, d, s) table of each row). The default decomposition expands both
    operands to the full batch on portable kernels; this is one bmm over s, its left operand
    and its output permuted (SAM ViT-B's encoder: 48 portable `expand_copy`, 132 ms)."""
    s, m, k = a.shape[-3:]
    lead = a.shape[:-3]
    rows = math.prod(lead)
    front = a.reshape(rows, s, m, k).permute(1, 0, 2, 3).reshape(s, rows * m, k)
    out = torch.bmm(front, b).reshape(s, rows, m, b.shape[-1]).permute(1, 0, 2, 3)
    return out.reshape(*lead, s, m, b.shape[-1])


_RESHAPES = (aten.view.default, aten.reshape.default)


def _finish(exported: Any) -> None:
    graph = exported.graph_module.graph
    graph.eliminate_dead_code()
    graph.lint()
    exported.graph_module.recompile()


def _finished(exported: Any, count: int) -> int:
    """A rewrite's end: the graph cleaned and recompiled when it changed `count` nodes."""
    if count:
        _finish(exported)
    return count


def infer_symbolic_reshapes(exported: Any) -> int:
    """Rewrite, in place, each reshape whose target shape has exactly one symbolic size and no
    -1 so that the symbolic size is -1 (the element count fixes it); returns how many."""
    count = 0
    for node in exported.graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in _RESHAPES:
            continue
        shape = list(node.args[1])
        symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if len(symbolic) == 1 and -1 not in shape:
            shape[symbolic[0]] = -1
            node.args = (node.args[0], shape, *node.args[2:])
            count += 1
    return _finished(exported, count)


_PERMUTES = (aten.permute.default, aten.transpose.int, aten.t.default)


def _order(node: Any) -> list[int] | None:
    """The dim order a permute, transpose or t node applies (None: another node)."""
    if getattr(node, "op", None) != "call_function" or node.target not in _PERMUTES:
        return None
    rank = node.args[0].meta["val"].dim()
    if node.target == aten.permute.default:
        return [d % rank for d in node.args[1]]
    order = list(range(rank))
    i, j = (0, 1) if node.target == aten.t.default else (a % rank for a in node.args[1:3])
    if rank >= 2:
        order[i], order[j] = order[j], order[i]
    return order


def _same_shape(a: Any, b: Any) -> bool:
    """Whether two shapes are the same size by size, symbolic sizes by their expression (never
    by the sizes the graph was traced with)."""
    return len(a) == len(b) and all(str(x) == str(y) for x, y in zip(a, b, strict=True))


def _through_identity_views(node: Any) -> Any:
    """`node`, or what it reshapes when it is a reshape to the same shape (a no-op view)."""
    while (
        getattr(node, "op", None) == "call_function"
        and node.target in _RESHAPES
        and isinstance(node.args[0], torch.fx.Node)
        and _same_shape(node.meta["val"].shape, node.args[0].meta["val"].shape)
    ):
        node = node.args[0]
    return node


def merge_permutes(exported: Any) -> int:
    """Replace, in place, a permute (transpose, t) of a permute, also through reshapes to the
    same shape, by one permute with the composed order, or by the input itself when the two
    restore its order: XNNPACK copies the tensor once per permute. Returns how many."""
    count = 0
    graph = exported.graph_module.graph
    for node in list(graph.nodes):
        outer = _order(node)
        if outer is None:
            continue
        inner_node = _through_identity_views(node.args[0])
        inner = _order(inner_node)
        if inner is None or len(outer) != len(inner):
            continue
        order = [inner[o] for o in outer]
        source = inner_node.args[0]
        if order == list(range(len(order))):
            node.replace_all_uses_with(source)
        else:
            with graph.inserting_before(node):
                merged = graph.call_function(aten.permute.default, (source, order))
            merged.meta = dict(node.meta)
            node.replace_all_uses_with(merged)
        count += 1
    return _finished(exported, count)


def linear_from_mm(exported: Any) -> int:
    """Rewrite, in place, `mm(x, t(W))` with W a parameter, buffer or constant as
    `linear(x, W)`, and `mm(x, W)` as `linear(x, W^T)` with W^T a new constant: XNNPACK's
    partitioner takes an mm only with a constant right operand, and a transposed one is not
    (the product is the same), and PT2E's quantizer quantizes linears, not mms; returns how
    many."""
    specs = {
        s.arg.name: s.target
        for s in exported.graph_signature.input_specs
        if s.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    }
    graph = exported.graph_module.graph
    transposed: dict[str, torch.fx.Node] = {}
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.mm.default:
            continue
        weight = node.args[1]
        if _order(weight) == [1, 0] and getattr(weight.args[0], "name", None) in specs:
            weight = weight.args[0]
        elif getattr(weight, "name", None) in specs and weight.meta["val"].dim() == 2:
            name = weight.name
            if name not in transposed:
                target = specs[name]
                value = exported.constants.get(target, exported.state_dict.get(target))
                transposed[name] = _lift_constant(
                    exported, f"{name}_transposed", value.detach().t().contiguous()
                )
            weight = transposed[name]
        else:
            continue
        with graph.inserting_before(node):
            linear = graph.call_function(aten.linear.default, (node.args[0], weight))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        graph.erase_node(node)
        count += 1
    return _finished(exported, count)


def _lift_constant(exported: Any, name: str, value: torch.Tensor) -> torch.fx.Node:
    """A new constant placeholder (before the user inputs), lifted as torch.export lifts a
    non-persistent buffer (ExecuTorch's delegate lowering unlifts those; new lifted tensor
    constants fail there)."""
    graph = exported.graph_module.graph
    specs = exported.graph_signature.input_specs
    first = next(i for i, s in enumerate(specs) if s.kind == InputKind.USER_INPUT)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(placeholders[first]):
        node = graph.placeholder(name)
    fake = next(n.meta["val"] for n in placeholders if "val" in n.meta)
    node.meta["val"] = fake.fake_mode.from_tensor(value, static_shapes=True)
    exported.constants[name] = value
    specs.insert(first, InputSpec(InputKind.BUFFER, TensorArgument(node.name), name, False))
    return node


def _call(graph: torch.fx.Graph, target: Any, *args: Any) -> torch.fx.Node:
    """A call node with its `val` metadata (the op run on the inputs' fake tensors)."""
    node = graph.call_function(target, args)
    vals = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
    node.meta["val"] = target(*vals)
    return node


_LAYER_NORMS = (aten.layer_norm.default, aten.native_layer_norm.default)


def decompose_layer_norms(exported: Any) -> int:
    """Rewrite, in place, each last-axis LayerNorm (`layer_norm`, or `native_layer_norm` whose
    mean and rstd outputs are unused) as ops XNNPACK delegates: mean and variance as a linear
    with a constant 1/C row, then sub, mul, add, rsqrt; returns how many."""
    graph = exported.graph_module.graph
    rows: dict[tuple[torch.dtype, int], torch.fx.Node] = {}
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _LAYER_NORMS:
            continue
        x, shape, weight, bias, eps = [*node.args, None, None, 1e-5][:5]
        native = node.target == aten.native_layer_norm.default
        users = list(node.users)
        if len(shape) != 1 or (
            native and any(u.target is not operator.getitem or u.args[1] != 0 for u in users)
        ):
            continue
        val = x.meta["val"]
        c = int(shape[0])
        if (val.dtype, c) not in rows:
            row = torch.full((1, c), 1.0 / c, dtype=val.dtype)
            rows[(val.dtype, c)] = _lift_constant(exported, f"_layer_norm_mean_{c}", row)
        row_node = rows[(val.dtype, c)]
        with graph.inserting_before(node):
            mean = _call(graph, aten.linear.default, x, row_node)
            centred = _call(graph, aten.sub.Tensor, x, mean)
            square = _call(graph, aten.mul.Tensor, centred, centred)
            var = _call(graph, aten.linear.default, square, row_node)
            rstd = _call(graph, aten.rsqrt.default, _call(graph, aten.add.Tensor, var, eps))
            y = _call(graph, aten.mul.Tensor, centred, rstd)
            if weight is not None:
                y = _call(graph, aten.mul.Tensor, y, weight)
            if bias is not None:
                y = _call(graph, aten.add.Tensor, y, bias)
        if native:
            for user in users:
                user.replace_all_uses_with(y)
                graph.erase_node(user)
        else:
            node.replace_all_uses_with(y)
        graph.erase_node(node)
        count += 1
    return _finished(exported, count)


#: the pooling window of `pooled_means`: sums of at most 256 terms, like the split mean
_POOL = 16


def _mean_axes(node: Any) -> list[int] | None:
    """The axes of a keepdim `mean.dim` of a static 4-D tensor (None: another node)."""
    if getattr(node, "op", None) != "call_function" or node.target != aten.mean.dim:
        return None
    val = node.args[0].meta["val"]
    if val.dim() != 4 or not _static(val.shape):
        return None
    if not (len(node.args) > 2 and node.args[2]) or node.kwargs.get("dtype") is not None:
        return None
    if not isinstance(node.args[1], list | tuple):
        return None
    return sorted(d % 4 for d in node.args[1])


def pooled_means(exported: Any) -> int:
    """Rewrite, in place, a spatial mean written as a mean over W then over H (the
    squeeze-excite mean of `SqueezeExcite(mean="split")`) as 16 x 16 average pools and a
    global mean: XNNPACK takes a 4-D mean only over H and W together, so each split mean ran
    on a portable kernel (one thread) and split the program into another delegate call, with
    layout transposes at each boundary (EdgeSAM's encoder: 14 delegate calls, 42 transposes).
    The sums stay short (<= 256 terms) as in the split form. Maps whose sides are not multiples
    of 16 keep the split form. Returns how many."""
    count = 0
    graph = exported.graph_module.graph
    for first in list(graph.nodes):
        axes = _mean_axes(first)
        if axes not in ([2], [3]) or len(first.users) != 1:
            continue
        (second,) = first.users
        if _mean_axes(second) != ([3] if axes == [2] else [2]):
            continue
        x = first.args[0]
        h, w = x.meta["val"].shape[2:]
        if h % _POOL or w % _POOL:
            continue
        with graph.inserting_before(second):
            window = [_POOL, _POOL]
            pooled = _call(graph, aten.avg_pool2d.default, x, window, window)
            mean = _call(graph, aten.mean.dim, pooled, [2, 3], True)
        second.replace_all_uses_with(mean)
        count += 1
    return _finished(exported, count)


def _static_4d(node: Any) -> bool:
    val = getattr(node, "meta", {}).get("val")
    return val is not None and val.dim() == 4 and _static(val.shape)


def _permute_of(node: Any, order: list[int]) -> Any:
    """The input of `node` when it is `permute(input, order)` (None otherwise)."""
    if getattr(node, "op", None) != "call_function" or node.target != aten.permute.default:
        return None
    return node.args[0] if [d % 4 for d in node.args[1]] == order else None


def channel_layer_norms(exported: Any) -> int:
    """Rewrite, in place, a LayerNorm over the channels of an NCHW map written channels-last
    (`permute(0, 2, 3, 1)`, a last-axis `layer_norm`, `permute(0, 3, 1, 2)`: EdgeSAM's
    `ChannelsLastLayerNorm2d` in the neck) in the channels-first form (mean and variance over
    the channel axis, sub, mul, add, rsqrt, the affine as a depthwise 1 x 1 convolution: as a
    mul and an add of (C, 1, 1) columns it broke per-call int8 programs at run time), whose
    channel means `channel_means` then gives XNNPACK. XNNPACK has no LayerNorm: the last-axis
    one ran on a portable kernel (one thread) between delegate calls, with a layout transpose
    at each side. A LayerNorm whose weight or bias is computed in the graph (not a parameter,
    buffer or constant) is left as it is. Returns how many."""
    graph = exported.graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _LAYER_NORMS:
            continue
        x = _permute_of(node.args[0], [0, 2, 3, 1])
        native = node.target == aten.native_layer_norm.default
        outputs = [u for u in node.users if u.target is operator.getitem] if native else [node]
        if (native and any(u.args[1] != 0 for u in outputs)) or len(outputs) != 1:
            continue
        back = list(outputs[0].users)
        if x is None or not _static_4d(x) or len(node.args[1]) != 1 or not back:
            continue
        if any(_permute_of(u, [0, 3, 1, 2]) is None for u in back):
            continue
        _, shape, weight, bias, eps = [*node.args, None, None, 1e-5][:5]
        c = int(shape[0])
        scale = _constant_value(exported, weight, torch.ones(c))
        shift = _constant_value(exported, bias, torch.zeros(c))
        if scale is None or shift is None:
            continue
        with graph.inserting_before(node):
            mean = _call(graph, aten.mean.dim, x, [1], True)
            centred = _call(graph, aten.sub.Tensor, x, mean)
            var = _call(
                graph, aten.mean.dim, _call(graph, aten.mul.Tensor, centred, centred), [1], True
            )
            rstd = _call(graph, aten.rsqrt.default, _call(graph, aten.add.Tensor, var, eps))
            y = _call(graph, aten.mul.Tensor, centred, rstd)
            if weight is not None or bias is not None:  # the affine: a depthwise 1 x 1 conv
                name = f"_channel_norm_{count}"
                kernel = _lift_constant(exported, f"{name}_weight", scale.reshape(c, 1, 1, 1))
                offset = _lift_constant(exported, f"{name}_bias", shift.clone())
                y = _call(graph, aten.conv2d.default, y, kernel, offset, [1, 1], [0, 0], [1, 1], c)
        for user in back:
            user.replace_all_uses_with(y)
        count += 1
    return _finished(exported, count)


def _constant_value(exported: Any, node: Any, default: torch.Tensor) -> torch.Tensor | None:
    """The value of a parameter, buffer or constant placeholder (`default` for None); None for
    any other node (a user input, or a value computed in the graph)."""
    if node is None:
        return default
    if node.op != "placeholder":
        return None
    spec = next((s for s in exported.graph_signature.input_specs if s.arg.name == node.name), None)
    if spec is None or spec.target is None:
        return None
    value = exported.state_dict.get(spec.target, exported.constants.get(spec.target))
    return None if value is None else value.detach().clone()


def channel_means(exported: Any) -> int:
    """Rewrite, in place, each mean over the channel axis of a static NCHW map (keepdim: the
    `LayerNorm2d` of SAM's necks) as a 1 x 1 convolution with a constant 1/C kernel: XNNPACK
    takes a 4-D mean only over H and W, so the channel mean ran on a portable kernel between
    delegate calls. Returns how many."""
    graph = exported.graph_module.graph
    kernels: dict[tuple[torch.dtype, int], torch.fx.Node] = {}
    count = 0
    for node in list(graph.nodes):
        if _mean_axes(node) != [1]:
            continue
        x = node.args[0]
        val = x.meta["val"]
        c = int(val.shape[1])
        if (val.dtype, c) not in kernels:
            kernel = torch.full((1, c, 1, 1), 1.0 / c, dtype=val.dtype)
            kernels[(val.dtype, c)] = _lift_constant(exported, f"_channel_mean_{c}", kernel)
        with graph.inserting_before(node):
            conv = _call(graph, aten.conv2d.default, x, kernels[(val.dtype, c)])
        node.replace_all_uses_with(conv)
        count += 1
    return _finished(exported, count)


_SPLITS = (aten.split_with_sizes.default, aten.split.Tensor)


def split_as_slices(exported: Any) -> int:
    """Rewrite, in place, each split of a static tensor (`split_with_sizes`, `split`: the
    attention's q, k, v taken from one projection in MobileSAM's and SAM's encoders) as one
    slice per part read: XNNPACK takes static slices, while the split ran as a portable copy
    of every part between delegate calls. Returns how many."""
    graph = exported.graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SPLITS:
            continue
        x, sizes, dim = [*node.args, 0][:3]
        val = x.meta["val"]
        if not _static(val.shape):
            continue
        dim %= val.dim()
        if node.target == aten.split.Tensor:  # equal parts of `sizes` elements, the last less
            step = int(sizes)
            sizes = [min(step, val.shape[dim] - i) for i in range(0, val.shape[dim], step)]
        if not _static(sizes):
            continue
        users = list(node.users)
        if any(u.target is not operator.getitem for u in users):
            continue
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for user in users:
            i = user.args[1]
            with graph.inserting_before(user):
                part = _call(graph, aten.slice.Tensor, x, dim, starts[i], starts[i] + sizes[i])
            user.replace_all_uses_with(part)
            graph.erase_node(user)
        graph.erase_node(node)
        count += 1
    return _finished(exported, count)


def unbinds_as_slices(exported: Any) -> int:
    """Rewrite, in place, each `unbind` of a static tensor (SAM ViT's q, k, v taken from one
    projection) as a static slice and a view per part read, which XNNPACK takes; lowered as it
    is, each part ran as a portable squeeze between delegate calls (ViT-B's encoder: 36).
    Returns how many."""
    graph = exported.graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.unbind.int:
            continue
        x, dim = [*node.args, 0][:2]
        val = x.meta["val"]
        users = list(node.users)
        if not _static(val.shape) or any(u.target is not operator.getitem for u in users):
            continue
        dim %= val.dim()
        shape = [d for i, d in enumerate(val.shape) if i != dim]
        for user in users:
            i = user.args[1]
            with graph.inserting_before(user):
                part = _call(graph, aten.slice.Tensor, x, dim, i, i + 1)
                part = _call(graph, aten.view.default, part, shape)
            user.replace_all_uses_with(part)
            graph.erase_node(user)
        graph.erase_node(node)
        count += 1
    return _finished(exported, count)


_FULLS = (aten.full.default, aten.new_full.default)


def lift_scalar_fulls(exported: Any) -> int:
    """Each one-element `full` (the spelled-out tanh GELU's constants, `_tanh_gelu`) becomes a
    constant of its own, stored with the program: left as `full`, it ran on a portable kernel
    at every call (EfficientViT-SAM-L0's encoder: 120 portable calls per image). Not shared
    between uses: XNNPACK's layout pass refuses a constant used channels-first in one place
    and channels-last in another."""
    graph = exported.graph_module.graph
    count = 0
    for node in list(graph.nodes):
        val = node.meta.get("val")
        if node.target not in _FULLS or val is None or val.numel() != 1:
            continue
        value = node.args[-1]  # the fill value: full(size, v), new_full(x, size, v)
        constant = torch.full(tuple(val.shape), value, dtype=val.dtype)
        node.replace_all_uses_with(_lift_constant(exported, f"_scalar_{node.name}", constant))
        graph.erase_node(node)
        count += 1
    return _finished(exported, count)


def drop_unused_constants(exported: Any) -> int:
    """Remove, in place, buffers and lifted constants that no node reads; returns how many.
    (ExecuTorch stores every constant input of the program, read or not.)"""
    graph = exported.graph_module.graph
    nodes = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    kinds = (InputKind.BUFFER, InputKind.CONSTANT_TENSOR, InputKind.PARAMETER)
    unused = [
        s
        for s in exported.graph_signature.input_specs
        if s.kind in kinds and s.target is not None and not nodes[s.arg.name].users
    ]
    if not unused:
        return 0
    mutated = set(exported.graph_signature.buffers_to_mutate.values())
    for spec in unused:
        if spec.target in mutated:
            continue
        exported.graph_signature.input_specs.remove(spec)
        exported.constants.pop(spec.target, None)
        exported.state_dict.pop(spec.target, None)
        graph.erase_node(nodes[spec.arg.name])
    _finish(exported)
    return len(unused)


def gemm_forms(exported: Any, dynamic: bool) -> tuple[Any, dict[str, int]]:
    """The first phase, before PT2E quantizes (so that its quantizer, which quantizes linears,
    sees the products with constant matrices as linears): a graph with a dynamic axis
    decomposed with `gemm_matmul`, then `merge_permutes` and `linear_from_mm`. Returns the new
    program (static graphs: the same one) and how many nodes each rewrite changed."""
    if not dynamic:
        return exported, {}
    exported = exported.run_decompositions({aten.matmul.default: gemm_matmul})
    done = {"merge_permutes": merge_permutes(exported)}
    done["linear_from_mm"] = linear_from_mm(exported)
    return exported, done


def rewrite_for_xnnpack(
    exported: Any, dynamic: bool, table: dict[Any, Any]
) -> tuple[Any, dict[str, int]]:
    """The second phase, on the program `gemm_forms` gave (exported again after PT2E when
    int8): decomposed with `table` (and `bmm_matmul` for a matmul left), then `pooled_means`,
    `channel_layer_norms`, `channel_means`, `split_as_slices`, `unbinds_as_slices`,
    `infer_symbolic_reshapes` (dynamic graphs), `merge_permutes`, `decompose_layer_norms`
    (after quantization, so the LayerNorms stay float), `lift_scalar_fulls`,
    `drop_unused_constants` and `fold_constants`. Every rewrite applies to every graph since
    2026-12-05 (the static image encoders kept their LayerNorms, splits and gathers on
    portable kernels before). Returns the program and how many nodes each rewrite changed."""
    table = {aten.matmul.default: bmm_matmul} | table
    exported = exported.run_decompositions(table)
    done = {"pooled_means": pooled_means(exported)}
    done["channel_layer_norms"] = channel_layer_norms(exported)
    done["channel_means"] = channel_means(exported)
    done["split_as_slices"] = split_as_slices(exported)
    done["unbinds_as_slices"] = unbinds_as_slices(exported)
    if dynamic:
        done["infer_symbolic_reshapes"] = infer_symbolic_reshapes(exported)
    done["merge_permutes"] = merge_permutes(exported)
    done["decompose_layer_norms"] = decompose_layer_norms(exported)
    done["lift_scalar_fulls"] = lift_scalar_fulls(exported)
    done["drop_unused_constants"] = drop_unused_constants(exported)
    exported = fold_constants(exported)
    return exported, done


def fold_constants(exported: Any) -> Any:
    """ExecuTorch's constant propagation (`constant_prop_pass`): what the program computes from
    its weights and buffers alone (MobileSAM's attention biases gathered by a constant index)
    is computed once at export and stored, instead of on a portable kernel at every call
    (`rows^T` of EdgeSAM's resize as well). Quantize / dequantize nodes are never folded (an
    int8 weight stays int8 for XNNPACK), nor `full` (a large constant)."""
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    skip: set[Any] = {aten.full.default}
    for namespace in ("quantized_decomposed", "torchao"):
        ops = getattr(torch.ops, namespace)
        for name in dir(ops):
            packet = getattr(ops, name, None)
            if isinstance(packet, torch._ops.OpOverloadPacket):
                skip |= {getattr(packet, o) for o in packet.overloads()}
    return constant_prop_pass(exported, custom_skip_targets=skip)
