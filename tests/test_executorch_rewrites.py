"""The ExecuTorch rewrites (host/targets/executorch_rewrites.py): same values,
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


class _ImageSide(torch.nn.Module):
    """The decoder's float patterns: image-side projections computed transposed (W @ X^T), a
    projection back (X @ W^T), a large right operand (the hypernetwork's product), LayerNorm
    over a dynamic token axis, and an unused 1 MB positional table."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(16, 32, generator=gen) / 6)
        self.out = torch.nn.Parameter(torch.randn(16, 32, generator=gen) / 4)
        self.norm = torch.nn.LayerNorm(32)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5, generator=gen)
            self.norm.bias.uniform_(-0.5, 0.5, generator=gen)
        self.register_buffer("unused", torch.randn(1, 256, 1024, generator=gen), persistent=False)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        keys = self.w @ image.transpose(1, 2)  # (1, 16, HW)
        attn = torch.softmax(self.norm(tokens)[..., :16] @ keys, dim=-1)  # (1, N, HW)
        mixed = attn @ (keys.transpose(1, 2) @ self.out)  # (1, N, 32)
        masks = mixed[:, :1] @ image.transpose(1, 2)  # (1, 1, HW): the large right operand
        return self.norm(mixed + tokens) + masks.mean()


def _lower_float(module: torch.nn.Module, rewrite: bool) -> tuple[bytes, dict[str, int]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    from edgesam_export.host.targets.executorch_rewrites import gemm_forms, rewrite_for_xnnpack

    n = torch.export.Dim("n", min=1, max=16)
    args = (torch.randn(1, 3, 32), torch.randn(1, 256, 32))
    exported = torch.export.export(module, args, dynamic_shapes=({1: n}, None), strict=False)
    if rewrite:
        exported, first = gemm_forms(exported, dynamic=True)
        exported, done = rewrite_for_xnnpack(exported, dynamic=True, table={})
        # both products with a constant matrix become linears: W @ X^T with W, X @ W with a
        # transposed copy of W, and the untransposed W is dropped with the unused table
        assert done["decompose_layer_norms"] == 2 and first["linear_from_mm"] == 2
        assert first["merge_permutes"] >= 1 and done["drop_unused_constants"] == 2
    lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(lowered.exported_program().graph_module)
    frame = info.get_operator_delegation_dataframe().set_index("op_type")
    portable = {
        str(k): int(v)
        for k, v in frame["occurrences_in_non_delegated_graphs"].items()
        if k not in ("Total", "getitem", "alloc", "sym_size") and v
    }
    return bytes(lowered.to_executorch().buffer), portable


@pytest.mark.extended  # two lowerings, ~15 s
def test_float_rewrites_delegate_layer_norm_and_gemms_and_drop_unused_constants() -> None:
    from executorch.runtime import Runtime

    module = _ImageSide().eval()
    plain, plain_portable = _lower_float(module, rewrite=False)
    rewritten, portable = _lower_float(module, rewrite=True)
    # the patterns: LayerNorm and the expand copies of the batched products run portable
    assert plain_portable.get("aten_native_layer_norm_default") == 2
    assert plain_portable.get("aten_expand_copy_default", 0) > 0
    assert not any("layer_norm" in k or "expand" in k or "mm" in k for k in portable), portable
    assert sum(portable.values()) < sum(plain_portable.values())
    # the unused 1 MB table was stored; now the program is smaller than it
    unused = module.unused.numel() * 4
    assert len(plain) > unused > len(rewritten)
    runtime = Runtime.get()
    for count in (1, 5, 16):  # the dynamic axis still dynamic
        tokens, image = torch.randn(1, count, 32), torch.randn(1, 256, 32)
        with torch.no_grad():
            want = module(tokens, image)
        got = runtime.load_program(rewritten).load_method("forward").execute([tokens, image])[0]
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.extended  # one decoder lowering, ~60 s
def test_the_decoder_program_stores_each_constant_once() -> None:
    """EdgeSAM's fp32 decoder program is no larger than the constants its graph reads (each
    once) plus 2 %: it was 24.7 MB with an unused 4 MB positional table stored beside them;
    and it transposes no large tensor but the embeddings."""
    from torch.export.graph_signature import InputKind

    from edgesam_export.host.models import load_model
    from edgesam_export.host.targets import executorch as et
    from edgesam_export.host.targets.executorch_rewrites import _PERMUTES

    loaded = load_model(None, synthetic="calibrated")
    module, args = et.program_graph(loaded, "decoder", False)
    inputs, _ = et._io(loaded.spec, "decoder")
    exported = et.exported_program(module, args, et._dynamic_shapes(inputs, 16))
    # XNNPACK copies per permute. Of tensors of 4096 x 128 values or more, only the embeddings
    # to tokens: the folded attention transposes nothing but its (4096, heads * T) scores. The
    # plain layout (int8's) gave 11: each image-side attention's two 4096-token operands; the
    # transposed image side of the ONNX graph before it, 18.
    large = [
        n
        for n in exported.graph.nodes
        if n.target in _PERMUTES and n.args[0].meta["val"].numel() >= 4096 * 128
    ]
    assert len(large) == 1, [n.args[0].meta["val"].shape for n in large]
    read = {n.name for n in exported.graph.nodes if n.op == "placeholder" and n.users}
    values = {**exported.state_dict, **exported.constants}
    constants = {
        s.target: values[s.target]
        for s in exported.graph_signature.input_specs
        if s.kind != InputKind.USER_INPUT and s.arg.name in read
    }
    unique = sum(t.numel() * t.element_size() for t in constants.values())
    assert unique > 16e6  # the decoder's weights and tables
    program = et.lower(exported)
    assert len(program) <= 1.02 * unique, (len(program), unique)


class _NormedImageSide(_ImageSide):
    """`_ImageSide`'s projections on normalised inputs, as the decoder's quantized ops read
    computed tensors (XNNPACK's channels-last pass fails on a quantized user input and on a
    quantized 0-dim tensor)."""

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        tokens, image = self.norm(tokens), self.norm(image)
        keys = self.w @ image.transpose(1, 2)  # (1, 16, HW)
        attn = torch.softmax(tokens[..., :16] @ keys, dim=-1)  # (1, N, HW)
        mixed = attn @ (keys.transpose(1, 2) @ self.out)  # (1, N, 32)
        return self.norm(mixed + tokens)


@pytest.mark.extended  # PT2E and one lowering, ~20 s
def test_int8_quantizes_the_products_with_constant_matrices() -> None:
    """PT2E runs after the GEMM forms: every product with a constant matrix (the transposed
    image-side projection, the projection back) is a linear with int8 per-channel weights, and
    the LayerNorms are decomposed after quantization, in float (no layer_norm left, no
    quantized 1/C row). The int8 program still computes the module, to int8 precision."""
    from executorch.runtime import Runtime

    from edgesam_export.host.targets import executorch as et

    module = _NormedImageSide().eval()
    gen = torch.Generator().manual_seed(1)
    n = torch.export.Dim("n", min=1, max=16)
    calibration = [
        (torch.randn(1, count, 32, generator=gen), torch.randn(1, 256, 32, generator=gen))
        for count in (3, 5, 8)
    ]
    exported = et.exported_program(module, calibration[0], ({1: n}, None), calibration)
    nodes = list(exported.graph.nodes)
    linears = [node for node in nodes if node.target == torch.ops.aten.linear.default]
    int8 = [node for node in linears if "dequantize_per_channel" in str(node.args[1].target)]
    assert len(int8) == 2, [str(node.args[1].target) for node in linears]
    calls = [str(node.target) for node in nodes if node.op == "call_function"]
    assert not any("layer_norm" in target for target in calls)
    program = et.lower(exported)
    tokens, image = torch.randn(1, 6, 32, generator=gen), torch.randn(1, 256, 32, generator=gen)
    with torch.no_grad():
        want = module(tokens, image)
    got = Runtime.get().load_program(program).load_method("forward").execute([tokens, image])[0]
    assert got.shape == want.shape
    assert (got - want).abs().max() < 0.1 * want.abs().max()


class _Permutes(torch.nn.Module):
    """The decoder's permute chains: a head split followed by the key transpose (two permutes
    that compose into one), and a transpose undone after a reshape to the same shape."""

    def forward(self, k: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = k.shape
        heads = k.reshape(b, n, 4, c // 4).transpose(1, 2).permute(0, 1, 3, 2)
        back = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x.shape[1]).transpose(1, 2)
        return heads * 2.0, back + 1.0


def test_merge_permutes_composes_chains_and_drops_the_ones_that_cancel() -> None:
    from edgesam_export.host.targets.executorch_rewrites import _PERMUTES, merge_permutes

    n = torch.export.Dim("n", min=1, max=16)
    args = (torch.randn(1, 7, 32), torch.randn(1, 5, 3))
    exported = torch.export.export(
        _Permutes(), args, dynamic_shapes=({1: n}, None), strict=False
    ).run_decompositions({})

    def permutes() -> list[torch.fx.Node]:
        return [n for n in exported.graph.nodes if n.target in _PERMUTES]

    assert len(permutes()) == 4
    assert merge_permutes(exported) == 2
    # one permute is left: the head split and the key transpose as one order
    (left,) = permutes()
    assert [d % 4 for d in left.args[1]] == [0, 2, 3, 1]
    for size in (1, 7, 16):
        k, x = torch.randn(1, size, 32), torch.randn(1, 5, 3)
        want = _Permutes()(k, x)
        got = exported.module()(k, x)
        for w, g in zip(want, got, strict=True):
            assert torch.equal(w, g)


class _SplitMeanGate(torch.nn.Module):
    """A squeeze-excite gate with the mean over W then over H (`SqueezeExcite(mean="split")`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(3, keepdim=True).mean(2, keepdim=True)
        return x * torch.sigmoid(self.fc(s))


@pytest.mark.extended  # two lowerings, ~10 s
def test_pooled_means_keep_the_squeeze_excite_mean_in_xnnpack() -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from edgesam_export.host.targets.executorch_rewrites import rewrite_for_xnnpack

    module = _SplitMeanGate().eval()
    x = torch.randn(1, 8, 64, 48) + 3.0

    def lower(rewrite: bool) -> tuple[bytes, int]:
        exported = torch.export.export(module, (x,), strict=False)
        if rewrite:
            exported, done = rewrite_for_xnnpack(exported, dynamic=False, table={})
            assert done["pooled_means"] == 1
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(lowered.exported_program().graph_module)
        frame = info.get_operator_delegation_dataframe().set_index("op_type")
        portable = int(frame["occurrences_in_non_delegated_graphs"].get("aten_mean_dim", 0))
        return bytes(lowered.to_executorch().buffer), portable

    _, plain_portable = lower(rewrite=False)
    pooled, portable = lower(rewrite=True)
    assert plain_portable == 2 and portable == 0  # the two split means ran portable
    want = module(x)
    got = Runtime.get().load_program(pooled).load_method("forward").execute([x])[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_merge_permutes_compares_symbolic_sizes_by_expression_not_by_traced_size() -> None:
    """A reshape counts as a no-op only when its sizes are the same expressions: a symbolic
    size is never equal to the number it was traced with (n = 7 here), which would merge
    permutes around a reshape that moves values for every other n."""
    from edgesam_export.host.targets.executorch_rewrites import _same_shape

    n = torch.export.Dim("n", min=1, max=16)
    exported = torch.export.export(
        _Permutes(), (torch.randn(1, 7, 32), torch.randn(1, 5, 3)), dynamic_shapes=({1: n}, None)
    )
    k = next(p for p in exported.graph.nodes if p.op == "placeholder" and p.name == "k")
    shape = k.meta["val"].shape  # (1, n, 32), traced at n = 7
    assert _same_shape(shape, shape)
    assert not _same_shape(shape, (1, 7, 32))
    assert not _same_shape((1, 7, 32), shape)


class _EncoderParts(torch.nn.Module):
    """What the image encoders of the other families hold, small: a window attention whose
    q, k, v are split from one projection and whose bias is gathered from a table by a
    constant index (TinyViT), its last-axis LayerNorm, SAM's LayerNorm2d (channel means),
    EdgeSAM's channels-last LayerNorm2d (`ChannelsLastLayerNorm2d`) and its neck's resize as
    two constant matrices (`MatrixUpsample`: `rows @ x` is a 2-D by 4-D product)."""

    def __init__(self) -> None:
        from edgesam_export.host.models.edgesam import ChannelsLastLayerNorm2d, MatrixUpsample
        from edgesam_export.host.models.sam_heads import LayerNorm2d

        super().__init__()
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.norm = torch.nn.LayerNorm(16)
        self.qkv = torch.nn.Linear(16, 48)
        self.biases = torch.nn.Parameter(torch.randn(2, 7))
        self.register_buffer("index", torch.randint(0, 7, (16, 16)), persistent=False)
        self.sam_norm = LayerNorm2d(16)
        self.edge_norm = ChannelsLastLayerNorm2d(LayerNorm2d(16))
        self.upsample = MatrixUpsample((4, 4), "bicubic")
        with torch.no_grad():
            for norm in (self.sam_norm, self.edge_norm):
                norm.weight.normal_()
                norm.bias.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(self.conv(x).flatten(2).transpose(1, 2))  # (1, 16 tokens, 16)
        q, k, v = self.qkv(t).reshape(b, h * w, 2, 24).permute(0, 2, 1, 3).split([8, 8, 8], 3)
        attn = torch.softmax(q @ k.transpose(-2, -1) + self.biases[:, self.index], dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, h * w, 16)
        y = out.transpose(1, 2).reshape(b, c, h, w)
        return self.upsample(self.edge_norm(self.sam_norm(y)))


def _portable_before_and_after(
    module: torch.nn.Module, x: torch.Tensor, expect: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """`module` lowered to XNNPACK without and with `rewrite_for_xnnpack` (which must change
    `expect`'s node counts): the portable operators each program runs, by type, and the
    rewritten program checked against PyTorch on the runtime."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from edgesam_export.host.targets.executorch_rewrites import rewrite_for_xnnpack

    def lower(rewrite: bool) -> tuple[bytes, dict[str, int]]:
        exported = torch.export.export(module, (x,), strict=False)
        if rewrite:
            exported, done = rewrite_for_xnnpack(exported, dynamic=False, table={})
            assert all(done[k] == n for k, n in expect.items()), done
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(lowered.exported_program().graph_module)
        frame = info.get_operator_delegation_dataframe().set_index("op_type")
        portable = frame["occurrences_in_non_delegated_graphs"]
        return bytes(lowered.to_executorch().buffer), {k: int(v) for k, v in portable.items() if v}

    _, plain = lower(rewrite=False)
    program, portable = lower(rewrite=True)
    with torch.no_grad():
        want = module(x)
    got = Runtime.get().load_program(program).load_method("forward").execute([x])[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    return plain, portable


@pytest.mark.extended  # two lowerings, ~10 s
def test_static_rewrites_leave_no_portable_operator_in_an_encoder_block() -> None:
    """The static encoders get the rewrites too (2026-12-05): XNNPACK has no LayerNorm, no
    channel mean, no split and no gather, so before, MobileSAM's encoder ran 84 portable
    operator calls per image between 55 delegate calls (expand copies of its batched products,
    LayerNorms, q/k/v splits, bias gathers: 159 of 621 ms). Rewritten, a block with each of
    them lowers to one delegate call with no portable operator, and computes the same values."""
    torch.manual_seed(0)
    expect = {"channel_layer_norms": 1, "split_as_slices": 1}
    expect |= {"channel_means": 4, "decompose_layer_norms": 1}
    plain, portable = _portable_before_and_after(
        _EncoderParts().eval(), torch.randn(1, 16, 4, 4), expect
    )
    for op in ("layer_norm", "mean_dim", "split", "index", "expand"):
        assert any(op in k for k in plain), (op, plain)  # each pattern ran portable before
    assert not any(k.startswith("aten_") for k in portable), portable


class _ViTParts(torch.nn.Module):
    """SAM ViT's attention in small, on a 4 x 4 grid: q, k, v unbound from one projection, and
    the relative-position term, queries (B', s, s, d) against a (s, d, s) table per row."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)
        self.table = torch.nn.Parameter(torch.randn(4, 8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).reshape(1, 16, 3, 8).permute(2, 0, 1, 3).unbind(0)
        rel = q.reshape(1, 4, 4, 8) @ self.table  # (1, 4, 4, 4): one (d, s) table per row
        attn = (q @ k.transpose(-2, -1)).reshape(1, 4, 4, 4, 4) + rel[:, :, :, :, None]
        return attn.reshape(1, 16, 16).softmax(dim=-1) @ v


@pytest.mark.extended  # two lowerings, ~10 s
def test_vit_attention_parts_lower_without_a_portable_operator() -> None:
    """SAM ViT's encoders ran portable kernels between delegate calls: the relative-position
    products broadcast a table over the batch (`expand_copy` of both operands: 48 in ViT-B's
    encoder, 132 ms), and `unbind` of q, k, v left a squeeze per part (36). Rewritten (one
    bmm over the table's rows; a slice and a view per part) they lower to one delegate call,
    same values: ViT-B's encoder 1.07x faster, bit-identical (docs/executorch.md)."""
    torch.manual_seed(0)
    plain, portable = _portable_before_and_after(
        _ViTParts().eval(), torch.randn(1, 16, 8), {"unbinds_as_slices": 1}
    )
    for op in ("expand", "squeeze"):
        assert any(op in k for k in plain), (op, plain)  # each ran portable before
    assert not any(k.startswith("aten_") for k in portable), portable


def test_lift_scalar_fulls_stores_one_element_fulls_and_leaves_larger_ones() -> None:
    """`full(size, v)` and `new_full(x, size, v)` of one element become stored constants with
    their fill value (the first read the size as the value before); a larger `full` stays."""
    from edgesam_export.host.targets.executorch_rewrites import lift_scalar_fulls

    class Fulls(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            one = torch.full((1, 1, 1, 1), 2.0) * x + x.new_full((1, 1, 1, 1), 0.5)
            return one + torch.full((1, 3, 1, 1), 0.25)

    x = torch.randn(1, 3, 4, 4)
    exported = torch.export.export(Fulls(), (x,), strict=False)
    assert lift_scalar_fulls(exported) == 2
    fulls = [n for n in exported.graph.nodes if n.op == "call_function" and "full" in n.name]
    assert [tuple(n.meta["val"].shape) for n in fulls] == [(1, 3, 1, 1)]
    torch.testing.assert_close(exported.module()(x), Fulls()(x))


def test_channel_layer_norms_leaves_a_layer_norm_whose_affine_is_computed() -> None:
    """`channel_layer_norms` stores the affine as a constant depthwise 1 x 1 convolution. A
    weight computed in the graph has no constant value: that LayerNorm stays as it is (the
    rewrite raised before), and the plain one beside it is still rewritten, same values."""
    from edgesam_export.host.targets.executorch_rewrites import channel_layer_norms

    class Norms(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8))
            self.bias = torch.nn.Parameter(torch.randn(8))

        def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), weight, self.bias)
            return y.permute(0, 3, 1, 2)

        def forward(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
            return self.norm(x, self.weight * gain) + self.norm(x, self.weight)

    torch.manual_seed(0)
    module, args = Norms().eval(), (torch.randn(1, 8, 4, 4), torch.randn(8))
    exported = torch.export.export(module, args, strict=False).run_decompositions({})
    assert channel_layer_norms(exported) == 1
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*args), module(*args), rtol=1e-5, atol=1e-5)
