"""Where a NaN or inf first appears: the feeds, or the first ONNX node whose output holds one.

Device side (numpy, onnx, onnxruntime). The judge calls this only after a candidate's output
was non-finite, since it reruns the graph. The copy of the graph gets, for every float tensor a
node produces, a scalar output counting its non-finite values (x - x is NaN exactly where x is
NaN or inf), so the search costs one run and a few scalars, not every activation in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device.parity import nonfinite_count
from edgesam_export.device.runtime import Session

_FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def describe_nonfinite(session: Session, feeds: Mapping[str, np.ndarray], output: str) -> str:
    """A clause for the verdict: which input was already non-finite, or the first node."""
    bad_feeds = [k for k, v in feeds.items() if nonfinite_count(v)]
    if bad_feeds:
        return f"; its input {', '.join(bad_feeds)} was already non-finite"
    path = getattr(session, "path", None)
    if session.backend != "onnx" or not isinstance(path, Path):
        return ""  # only ONNX graphs can be rerun with their intermediates exposed
    try:
        found = first_nonfinite_node(path, feeds)
    except Exception as exc:  # the search is a diagnosis: never turn a verdict into a crash
        return f"; could not locate the first non-finite node ({type(exc).__name__})"
    if found is None:
        return ""
    node, op, initializers = found
    where = f"; first non-finite node: {node} ({op})"
    if initializers:
        where += f", whose weights {', '.join(initializers)} hold NaN/inf"
    return where


def first_nonfinite_node(
    path: Path, feeds: Mapping[str, np.ndarray]
) -> tuple[str, str, list[str]] | None:
    """(node name, op type, its non-finite initializers) of the first node, in graph order,
    with a non-finite float output on `feeds`; None when every node output is finite."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    model = onnx.load(str(path))
    graph = model.graph
    inferred = shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    }
    probes: list[Any] = []
    watched: list[tuple[str, Any]] = []  # (probe output, node)
    for i, node in enumerate(graph.node):
        for j, tensor in enumerate(node.output):
            if not tensor or types.get(tensor) not in _FLOAT_TYPES:
                continue
            k = f"nonfinite|{i}|{j}"
            probes += [
                helper.make_node("Cast", [tensor], [k + "f"], to=TensorProto.FLOAT),
                helper.make_node("Sub", [k + "f", k + "f"], [k + "d"]),
                helper.make_node("IsNaN", [k + "d"], [k + "n"]),
                helper.make_node("Cast", [k + "n"], [k + "c"], to=TensorProto.FLOAT),
                helper.make_node("ReduceSum", [k + "c"], [k], keepdims=0),
            ]
            watched.append((k, node))
    if not watched:
        return None
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(k, TensorProto.FLOAT, []) for k, _ in watched)
    graph.node.extend(probes)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    counts = sess.run([k for k, _ in watched], dict(feeds))
    for (_, node), count in zip(watched, counts, strict=True):
        if float(count) > 0:
            weights = {init.name: init for init in graph.initializer}
            bad = [
                name
                for name in node.input
                if name in weights and nonfinite_count(numpy_helper.to_array(weights[name]))
            ]
            return node.name or node.output[0], node.op_type, bad
    return None
