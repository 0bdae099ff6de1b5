"""One ONNX decoder that holds both forms of its cross-attention and picks one per call.

The folded attention (`Attention`, form "folded") never projects the 4096 image tokens, so its
cost grows with the token count T (points + padding + the 5 output tokens); the projected form
pays two 4096 x 256 x 128 projections per attention whatever T is. Folded is the cheaper one
for the point counts clicks give, projected from about 14 points (fp32) or 9 (static int8,
whose projections run on integer kernels): docs/onnx-graph.md. `--attention auto`
exports both and joins them here under one `If` on the point count, so no caller has to know
its prompts' size in advance.

The two branches are the two finished graphs (simplified, reduced in precision), their names
kept apart by a prefix; the large initializers both hold byte for byte (the token side, the
upscaling, the heads, the positional encoding) move to the outer graph, once, where both
branches read them as outer-scope values; the rest stay in their branch. Inputs and outputs
are the folded graph's, and so is the metadata, with what the projected graph says differently
beside it (`switched_metadata`).
"""

from __future__ import annotations

import math
from typing import Any

from edgesam_export.host.targets.onnx_weights import initializer_key

#: The first point count (the decoder's N input: box corners and padding included) at which the
#: projected form runs, by whether the decoder's products are int8: where the two forms cross in
#: paired runs of both (docs/onnx-graph.md). fp32: folded faster up to 13 points (0.975x the
#: projected form's time at 13), projected from 14 (1.016x at 14, 1.045x at 16); int8: even at
#: 8-9 (0.99x, 1.00x), projected from 10 (1.05x).
PROJECTED_FROM = {False: 14, True: 9}

#: Initializers both forms hold (byte for byte) with at least this many values live once, in the
#: outer graph; smaller ones stay in each branch, where onnxruntime folds the shape arithmetic
#: that reads them (read from the outer graph, ~50 more shape nodes ran per call: 1-4 % slower).
#: The large ones cost 2-4 % at few points in fp32 read from outside (with every weight copied
#: into each branch, twice the file, none: most likely onnxruntime prepacks only a subgraph's
#: own weights), which the halved file is worth.
SHARE_MIN = 1024

_POINTS_INPUT = "point_coords"


def projected_from(int8: bool) -> int:
    """The point count from which an `auto` decoder runs its projected branch."""
    return PROJECTED_FROM[int8]


def switched_metadata(
    few: dict[str, str], many: dict[str, str], projected_from: int
) -> dict[str, str]:
    """The joined graph's metadata: the folded graph's, what the projected graph says
    differently under `<key>.projected` (its int8 search's float blocks, mask IoU, report), and
    the switch."""
    return (
        few
        | {
            f"{k}.projected": v
            for k, v in many.items()
            if few.get(k) != v and k != "decoder.attention"
        }
        | {"decoder.attention": "auto", "decoder.attention.projected_from": str(projected_from)}
    )


def switch_on_points(few: Any, many: Any, projected_from: int) -> Any:
    """An ONNX model computing `few` (the folded graph) for fewer than `projected_from` points
    and `many` (the projected graph) from there on; both must have the same inputs and outputs.
    """
    from onnx import TensorProto, helper

    names = [[i.name for i in m.graph.input] for m in (few, many)]
    outs = [[o.name for o in m.graph.output] for m in (few, many)]
    if names[0] != names[1] or outs[0] != outs[1]:
        raise ValueError(f"the two decoder forms differ in their I/O: {names} -> {outs}")
    if _POINTS_INPUT not in names[0]:
        raise ValueError(f"a decoder without {_POINTS_INPUT!r} has no point count to switch on")
    keys = [{initializer_key(t): t for t in m.graph.initializer} for m in (few, many)]
    shared = {
        key: _renamed(tensor, f"shared/{i}")
        for i, (key, tensor) in enumerate(
            (k, t) for k, t in keys[0].items() if k in keys[1] and _size(t) >= SHARE_MIN
        )
    }
    branches = [
        _branch(model, prefix, set(names[0]), shared)
        for model, prefix in ((few, "folded/"), (many, "projected/"))
    ]
    limit = helper.make_tensor("switch/projected_from", TensorProto.INT64, [], [projected_from])
    axis = helper.make_tensor("switch/points_axis", TensorProto.INT64, [], [1])
    nodes = [
        helper.make_node("Shape", [_POINTS_INPUT], ["switch/shape"], name="switch/Shape"),
        helper.make_node(
            "Gather", ["switch/shape", "switch/points_axis"], ["switch/points"], name="switch/N"
        ),
        helper.make_node(
            "Less", ["switch/points", "switch/projected_from"], ["switch/few"], name="switch/few"
        ),
        helper.make_node(
            "If",
            ["switch/few"],
            outs[0],
            name="switch/attention",
            then_branch=branches[0],
            else_branch=branches[1],
        ),
    ]
    graph = helper.make_graph(
        nodes,
        few.graph.name,
        list(few.graph.input),
        list(few.graph.output),
        initializer=[limit, axis, *shared.values()],
    )
    model = helper.make_model(graph, opset_imports=list(few.opset_import))
    model.ir_version = few.ir_version
    for field in ("producer_name", "producer_version", "doc_string"):
        setattr(model, field, getattr(few, field))
    return model


def _size(tensor: Any) -> int:
    return math.prod(tensor.dims)


def _renamed(tensor: Any, name: str) -> Any:
    import onnx

    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _branch(
    model: Any,
    prefix: str,
    inputs: set[str],
    shared: dict[tuple[int, tuple[int, ...], bytes], Any],
) -> Any:
    """`model`'s graph as an `If` branch: no inputs; its initializers in `shared` read from the
    outer graph, the others its own; every other name prefixed."""
    import onnx
    from onnx import helper

    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        raise ValueError("a decoder form with subgraphs of its own cannot be a branch")
    rename: dict[str, str] = {}
    own = []
    for init in graph.initializer:
        outer = shared.get(initializer_key(init))
        rename[init.name] = outer.name if outer is not None else prefix + init.name
        if outer is None:
            own.append(_renamed(init, rename[init.name]))

    def name(x: str) -> str:
        if not x or x in inputs:
            return x
        return rename.get(x, prefix + x)

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        copy.input[:] = [name(x) for x in node.input]
        copy.output[:] = [name(x) for x in node.output]
        nodes.append(copy)

    def renamed(infos: Any) -> list[Any]:
        out = []
        for info in infos:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(info)
            copy.name = name(info.name)
            out.append(copy)
        return out

    return helper.make_graph(
        nodes,
        prefix.rstrip("/"),
        [],
        renamed(graph.output),
        initializer=own,
        value_info=renamed(graph.value_info),
    )
