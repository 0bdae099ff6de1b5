"""Version-scoped coremltools workarounds, applied only while our conversion runs.

Each `Patch` names the coremltools versions it covers, what breaks without it, and installs
itself through `swap` so that leaving `patched_coremltools()` restores coremltools exactly as it
was, even when the conversion raises. Nothing here edits site-packages or stays installed: other
code converting in the same process sees the stock converter.

Host side (imports coremltools' torch frontend lazily, inside the context manager).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edgesam_export.device.errors import ExportFailedError

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    """'7.1' -> (7, 1, 0); the first three numbers of a version string."""
    parts = [int(m) for m in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


@dataclass(frozen=True)
class Patch:
    name: str
    since: Version  # first coremltools version the patch covers (inclusive)
    until: Version  # first version it no longer covers (exclusive)
    why: str
    install: Callable[[contextlib.ExitStack], None]
    # An extra condition besides the coremltools version (e.g. the numpy version); None: always.
    needed: Callable[[], bool] | None = None

    def covers(self, version: Version) -> bool:
        in_range = self.since <= version < self.until
        return in_range and (self.needed is None or self.needed())


def swap(stack: contextlib.ExitStack, obj: Any, attr: str, value: Any) -> None:
    """Set obj.attr (or obj[attr] for dicts) to value until the stack closes."""
    if isinstance(obj, dict):
        old = obj[attr]
        obj[attr] = value
        stack.callback(obj.__setitem__, attr, old)
    else:
        old = getattr(obj, attr)
        setattr(obj, attr, value)
        stack.callback(setattr, obj, attr, old)


def _torch_ops() -> Any:
    from coremltools.converters.mil.frontend.torch import ops

    return ops


def _registry() -> dict[str, Callable[..., Any]]:
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    mapping: dict[str, Callable[..., Any]] = _TORCH_OPS_REGISTRY.name_to_func_mapping
    return mapping


# --- mean(x, dim, keepdim, dtype) on coremltools 7.x ----------------------------------------

_TORCH_FLOAT32 = 6  # torch's ScalarType code for float32, as TorchScript constants carry it


def _install_mean_dtype(stack: contextlib.ExitStack) -> None:
    mapping = _registry()
    original = mapping["mean"]

    def mean(context: Any, node: Any) -> Any:
        if len(node.inputs) > 3:
            dtype_var = _torch_ops()._get_inputs(context, node)[3]
            value = None if dtype_var is None else dtype_var.val
            if value is not None and int(value) != _TORCH_FLOAT32:
                raise ExportFailedError(
                    f"mean with dtype code {int(value)} (not float32) at {node.name}: the"
                    " mean-dtype workaround only drops a float32 dtype argument"
                )
            inputs = node.inputs
            node.inputs = inputs[:3]
            try:
                return original(context, node)
            finally:
                node.inputs = inputs
        return original(context, node)

    for name, func in list(mapping.items()):
        if func is original:
            swap(stack, mapping, name, mean)


# --- int()/bool() of a one-element constant with numpy >= 2.4 --------------------------------


def _numpy_refuses_array_scalars() -> bool:
    import numpy as np

    return parse_version(np.__version__) >= (2, 4, 0)


def _install_cast_item(stack: contextlib.ExitStack) -> None:
    ops = _torch_ops()
    original = ops._cast

    def _cast(context: Any, node: Any, dtype: Any, dtype_name: str) -> Any:
        import numpy as np
        from coremltools.converters.mil import Builder as mb

        x = ops._get_inputs(context, node, expected=1)[0]
        val = x.val if x.can_be_folded_to_const() else None
        if isinstance(val, np.ndarray) and val.size == 1 and not isinstance(val, dtype):
            context.add(mb.const(val=dtype(val.reshape(()).item()), name=node.name), node.name)
            return None
        return original(context, node, dtype, dtype_name)

    swap(stack, ops, "_cast", _cast)


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="mean-dtype",
        since=(7, 0, 0),
        until=(8, 0, 0),
        why=(
            "coremltools 7.x translates aten::mean with `assert len(inputs) <= 3 or inputs[3] is"
            " None`, so a traced `mean(..., dtype=torch.float32)` (EdgeSAM's official scripts,"
            " and recent torch versions that record the dtype) stops the conversion. A float32"
            " dtype changes nothing for float32 inputs: the patch drops it; any other dtype is"
            " a clear ExportFailedError. coremltools 8 parses the argument itself."
        ),
        install=_install_mean_dtype,
    ),
    Patch(
        name="cast-one-element-const",
        since=(6, 0, 0),
        until=(9, 1, 0),
        why=(
            "coremltools up to 9.0 folds a traced int()/bool() of a constant with"
            " `int(x.val)`; the traced decoder's shape arithmetic (`c // num_heads`) gives a"
            " one-element array, and numpy >= 2.4 refuses to convert arrays with ndim > 0 to a"
            " scalar ('only 0-dimensional arrays can be converted'). The patch takes the"
            " element with `.item()`, which is what older numpy did."
        ),
        install=_install_cast_item,
        needed=_numpy_refuses_array_scalars,
    ),
)


def coremltools_version() -> Version:
    import coremltools

    return parse_version(coremltools.__version__)


def applicable(version: Version | None = None) -> list[Patch]:
    """The patches this coremltools version (default: the installed one) needs."""
    version = coremltools_version() if version is None else version
    return [p for p in PATCHES if p.covers(version)]


@contextlib.contextmanager
def patched_coremltools(version: Version | None = None) -> Iterator[list[str]]:
    """Apply the patches the installed coremltools needs; yields their names; undoes them all."""
    with contextlib.ExitStack() as stack:
        names = []
        for patch in applicable(version):
            patch.install(stack)
            names.append(patch.name)
        yield names
