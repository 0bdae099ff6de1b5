"""The ExecuTorch rewrites for dynamic graphs (host/targets/executorch_rewrites.py): same values,
fewer portable-kernel nodes between XNNPACK delegate calls."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "executorch.runtime", reason="executorch is not installed: pip install '.[executorch]'"
)

from edgesam_export.host.targets.executorch_rewrites import bmm_matmul, infer_symbolic_reshapes


class _Attention(torch.nn.Module):
    """Multi-head attention over a dynamic token axis, written as the decoder writes it."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        b, n, c = q.shape
        qh = q.reshape(b, n, 4, c // 4).transpose(1, 2)
        kh = k.reshape(b, k.shape[1], 4, c // 4).transpose(1, 2)
        attn = torch.softmax(qh @ kh.transpose(-1, -2), dim=-1)
        return (attn @ kh).transpose(1, 2).reshape(b, n, c)


def _lower(rewrite: bool) -> tuple[bytes, int, int]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    n = torch.export.Dim("n", min=1, max=16)
    args = (torch.randn(1, 3, 32), torch.randn(1, 64, 32))
    exported = torch.export.export(_Attention(), args, dynamic_shapes=({1: n}, None), strict=False)
    table = {torch.ops.aten.matmul.default: bmm_matmul} if rewrite else {}
    exported = exported.run_decompositions(table)
    if rewrite:
        assert infer_symbolic_reshapes(exported) >= 1
    lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(lowered.exported_program().graph_module)
    frame = info.get_operator_delegation_dataframe()
    portable = frame.set_index("op_type")["occurrences_in_non_delegated_graphs"]
    copies = int(portable.get("aten_expand_copy_default", 0))
    reshapes = int(portable.get("aten_view_copy_default", 0))
    return bytes(lowered.to_executorch().buffer), copies, reshapes


@pytest.mark.extended  # two lowerings, ~30 s
def test_rewrites_keep_values_and_move_copies_and_reshapes_into_xnnpack() -> None:
    from executorch.runtime import Runtime

    plain, plain_copies, plain_reshapes = _lower(rewrite=False)
    rewritten, copies, reshapes = _lower(rewrite=True)
    assert plain_copies > 0 and plain_reshapes > 0  # the patterns the rewrites are for
    assert copies == 0 and reshapes < plain_reshapes
    runtime = Runtime.get()
    for count in (1, 5, 16):  # the dynamic axis still dynamic
        q, k = torch.randn(1, count, 32), torch.randn(1, 64, 32)
        want = _Attention()(q, k)
        outs = [
            runtime.load_program(p).load_method("forward").execute([q, k])[0]
            for p in (plain, rewritten)
        ]
        assert outs[1].shape == want.shape
        assert torch.equal(outs[0], outs[1])
        torch.testing.assert_close(outs[1], want, rtol=1e-5, atol=1e-5)
