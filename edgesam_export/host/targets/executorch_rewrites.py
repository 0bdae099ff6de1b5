"""Graph rewrites that let XNNPACK take more of a program with dynamic dims, numbers unchanged.

ExecuTorch hands XNNPACK only what its partitioner accepts; the rest runs on portable kernels
between delegate calls. Two patterns in a graph with a dynamic point (or memory) axis split the
decoder into 47 delegate calls and left 237 nodes on portable kernels (EdgeSAM, fp32):

- a batched `matmul` lowers to `expand_copy` + `view_copy` + `bmm`, and `expand_copy` is a real
  copy on a portable kernel even when nothing is broadcast (the decoder's attention: 41 copies,
  some of 4 MB). `bmm_matmul` writes equal-batch matmuls as one `bmm` on 3-D views instead.
- XNNPACK's reshape takes one inferred (-1) dimension but no symbolic size, so a reshape to
  `(1, 5 + N, 8, 16)` stays on a portable kernel. `infer_symbolic_reshapes` writes the one
  symbolic size of such a reshape as -1, which is the same shape.

Both give the same values bit for bit (the same bmm kernels on the same numbers); on EdgeSAM's
fp32 decoder they leave 22 delegate calls and 114 portable nodes, 1.30x faster (docs/executorch.md).
"""

from __future__ import annotations

from typing import Any

import torch


def bmm_matmul(a: torch.Tensor, b: torch.Tensor) -> Any:
    """`aten.matmul` of tensors with the same static batch dims as one bmm, without expand;
    anything else (broadcasting, 2-D, symbolic batch) keeps the default decomposition."""
    if a.dim() < 3 or a.dim() != b.dim():
        return NotImplemented
    batch = 1
    for da, db in zip(a.shape[:-2], b.shape[:-2], strict=True):
        if not (isinstance(da, int) and isinstance(db, int)) or da != db:
            return NotImplemented
        batch *= da
    out = torch.bmm(a.reshape(batch, a.shape[-2], a.shape[-1]), b.reshape(batch, *b.shape[-2:]))
    return out.reshape(*a.shape[:-1], b.shape[-1])


_RESHAPES = (torch.ops.aten.view.default, torch.ops.aten.reshape.default)


def infer_symbolic_reshapes(exported: Any) -> int:
    """Rewrite, in place, each reshape whose target shape has exactly one symbolic size and no
    -1 so that the symbolic size is -1 (the element count fixes it); returns how many."""
    graph = exported.graph_module.graph
    count = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _RESHAPES:
            continue
        shape = list(node.args[1])
        symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if len(symbolic) == 1 and -1 not in shape:
            shape[symbolic[0]] = -1
            node.args = (node.args[0], shape, *node.args[2:])
            count += 1
    if count:
        graph.eliminate_dead_code()
        graph.lint()
        exported.graph_module.recompile()
    return count
