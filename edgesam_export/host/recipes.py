"""Recipes: declarative builds (YAML) validated by one typed schema.

A recipe names a model, its weights, and the targets to build, each target's `options` being
exactly that backend's typed options class (`config.OnnxOptions`, ...). The target kinds are
generated from the backend registry (`device.backends`): every entry with recipe options is a
kind, under its name and its aliases, so a new backend needs no change here or in the build.

Errors name the file, line and column, the field (`targets[1].options.opset`) and what is
allowed; unknown and duplicate keys are errors, never ignored. Paths in a recipe are relative to
the recipe file's folder. Torch-free: `edgesam-export recipe schema` and editors need no torch.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from edgesam_export.device.backends import CHECKS, all_backends, get_backend, recipe_options
from edgesam_export.device.errors import InputError
from edgesam_export.host.config import ExportOptions, SyntheticKind, UpsampleMode

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"  # target and folder names: safe on every filesystem


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Weights(_Strict):
    """A checkpoint, or deterministic synthetic weights (labelled as such in every artifact)."""

    checkpoint: Path | None = Field(
        None,
        description="Checkpoint path, relative to the recipe file; `--checkpoint` overrides it."
        " Null: synthetic weights (demos and CI) unless require_checkpoint is true.",
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="Pin: the build refuses a checkpoint with another sha256.",
    )
    require_checkpoint: bool = Field(
        False, description="Refuse to build from synthetic weights (release recipes)."
    )
    synthetic: SyntheticKind = Field(
        "calibrated", description="Synthetic weights when no checkpoint is given."
    )
    seed: int = Field(0, ge=0, description="Synthetic-weight seed.")


class Parity(_Strict):
    """Whether to check each artifact against PyTorch, and tolerances tighter than the defaults."""

    check: bool = Field(True, description="Run the parity check (false: artifacts 'unchecked').")
    tolerances: dict[str, float] = Field(
        default_factory=dict,
        description="Per-check max |candidate - reference|, e.g. {decoder.masks: 5e-5}. May only"
        " tighten the registry's tolerance row (device/backends.py) for the artifact's backend and"
        " precision.",
    )

    @field_validator("tolerances")
    @classmethod
    def _known_checks(cls, v: dict[str, float]) -> dict[str, float]:
        known = CHECKS
        for key, value in v.items():
            if key not in known:
                raise ValueError(f"unknown parity check {key!r}; allowed: {', '.join(known)}")
            if not value > 0:
                raise ValueError(f"tolerance for {key} must be > 0, got {value}")
        return v


class Output(_Strict):
    directory: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Folder under --output holding this recipe's build (default: the recipe"
        " name). Each target's files go to <directory>/<target name>/.",
    )


class TargetBase(_Strict):
    """What every target entry has; `kind` selects the backend and the type of `options`."""

    kind: str  # each generated member narrows it to its backend's names (the discriminator)
    name: str = Field(pattern=NAME_PATTERN, description="Unique in the recipe; its folder name.")
    upsample: UpsampleMode | None = Field(
        None, description="Neck upsampling for this target (default: the recipe's)."
    )
    parity: Parity | None = Field(None, description="Overrides the recipe's parity settings.")
    options: ExportOptions

    @field_validator("kind")
    @classmethod
    def _canonical(cls, v: str) -> str:
        """An alias (`trt`) is recorded under the backend's name (`tensorrt`)."""
        return get_backend(v).name

    @field_validator("options")
    @classmethod
    def _no_output(cls, options: ExportOptions) -> ExportOptions:
        if "output" in options.model_fields_set:
            raise ValueError(
                "options.output is set by the build (--output and the recipe's output.directory);"
                " remove it"
            )
        return options

    def packages(self) -> tuple[str, ...]:
        """The libraries this target exports and checks with (their versions go in the
        manifest): the backend's, plus the simplifier its options choose, if any."""
        chosen = getattr(self.options, "simplifier", "none")
        extra = (chosen,) if chosen != "none" else ()
        return tuple(dict.fromkeys((*get_backend(self.kind).packages, *extra)))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as data (build workers are spawned): the generated classes are rebuilt from
        the registry on the other side, not looked up by name."""
        return (_target_from_data, (self.model_dump(mode="json", exclude_unset=True),))


KindsKey = tuple[tuple[tuple[str, ...], str], ...]


def _kinds_key() -> KindsKey:
    """What the generated target classes depend on: each recipe kind's names and options."""
    return tuple((b.names, b.recipe_options) for b in all_backends() if b.recipe_kind)


@cache
def _members(key: KindsKey) -> tuple[type[TargetBase], ...]:
    members = []
    for names, _ in key:
        options = recipe_options(names[0])
        kind: Any = Literal[names]  # type: ignore[valid-type]
        members.append(
            create_model(
                f"{names[0].capitalize()}Target",
                __base__=TargetBase,
                __module__=__name__,
                kind=(kind, ...),
                options=(options, Field(default_factory=options)),
            )
        )
    return tuple(members)


def target_entries() -> tuple[type[TargetBase], ...]:
    """One target class per recipe kind of the registry, as it is now."""
    return _members(_kinds_key())


def _entry_type() -> Any:
    members = target_entries()
    if len(members) == 1:
        return members[0]
    return Annotated[typing.Union[members], Field(discriminator="kind")]  # noqa: UP007


def _target_from_data(data: dict[str, Any]) -> TargetBase:
    target: TargetBase = TypeAdapter(_entry_type()).validate_python(data)
    return target


class Recipe(_Strict):
    """One model, its weights and the artifacts to build from it."""

    version: Literal[1] = Field(1, description="Recipe format version.")
    name: str = Field(pattern=NAME_PATTERN, description="Recipe name (default output folder).")
    description: str = ""
    model: str = Field("edge_sam", description="Registered model name (edgesam-export models).")
    upsample: UpsampleMode | None = Field(
        None, description="Neck upsampling (default: the family's trained setting)."
    )
    weights: Weights = Field(default_factory=Weights)  # type: ignore[arg-type]
    parity: Parity = Field(default_factory=Parity)  # type: ignore[arg-type]
    output: Output = Field(default_factory=Output)  # type: ignore[arg-type]
    targets: list[TargetBase] = Field(min_length=1)  # validated as the registry's kinds

    @model_validator(mode="after")
    def _unique_target_names(self) -> Recipe:
        seen: set[str] = set()
        for target in self.targets:
            if target.name in seen:
                raise ValueError(f"target name {target.name!r} is used twice")
            seen.add(target.name)
        return self

    @property
    def directory(self) -> str:
        return self.output.directory or self.name

    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]


@cache
def _recipe_model(key: KindsKey) -> type[Recipe]:
    """`Recipe` whose targets are the registry's kinds (the union is rebuilt when they change)."""
    del key  # the cache key: _entry_type() reads the same registry state
    targets: Any = list[_entry_type()]  # type: ignore[misc]
    model: type[Recipe] = create_model(
        "Recipe",
        __base__=Recipe,
        __module__=__name__,
        targets=(targets, Field(min_length=1)),
    )
    return model


def recipe_model() -> type[Recipe]:
    return _recipe_model(_kinds_key())


def json_schema() -> dict[str, Any]:
    """The recipe JSON schema (for editors: yaml-language-server, VS Code, JetBrains)."""
    schema = recipe_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edgesam-export recipe"
    return schema


# --- loading with file:line:column in every error --------------------------------------------


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    path: Path
    sha256: str  # of the file's bytes: the manifest records exactly which recipe was built

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def checkpoint_path(self) -> Path | None:
        ckpt = self.recipe.weights.checkpoint
        if ckpt is None:
            return None
        return ckpt if ckpt.is_absolute() else self.base_dir / ckpt


def _mark(node: yaml.Node) -> str:
    return f"{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _find_node(root: yaml.Node | None, loc: tuple[int | str, ...]) -> tuple[yaml.Node | None, bool]:
    """The YAML node at a pydantic error location; (closest parent, False) if it is absent.

    Steps that are not in the document (a discriminated union's tag, a model validator's
    empty step) are skipped, so the location still lands on the right line.
    """
    node = root
    for step in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            for key, value in node.value:
                if key.value == step:
                    node = value
                    break
            else:
                if step in _union_tags():
                    continue
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if step >= len(node.value):
                return node, False
            node = node.value[step]
        else:
            continue
    return node, True


def _key_node(root: yaml.Node | None, loc: tuple[int | str, ...]) -> yaml.Node | None:
    """The key node of the last step (where an unknown key is written)."""
    parent, found = _find_node(root, loc[:-1])
    if found and isinstance(parent, yaml.MappingNode):
        for key, _ in parent.value:
            if key.value == loc[-1]:
                return key  # type: ignore[no-any-return]
    return None


def _tags(entry: Any) -> tuple[str, ...]:
    """The `kind` literals of a target entry class (its backend's name and aliases)."""
    fields = getattr(entry, "model_fields", {})
    if "kind" not in fields:
        return ()
    return tuple(str(a) for a in typing.get_args(fields["kind"].annotation))


def _union_tags() -> set[str]:
    """The steps of an error location that name a member of the target union."""
    return {tag for member in target_entries() for tag in _tags(member)}


def _unwrap(tp: Any) -> Any:
    """Strip Annotated/Optional/list to the model classes a location step can lead into."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        members = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else members
    return tp


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys allowed in the mapping at `loc` (for 'unknown key' messages)."""
    current: Any = recipe_model()
    for step in loc:
        current = _unwrap(current)
        if step in _union_tags():  # a discriminated union's tag: select its member
            members = current if isinstance(current, list) else [current]
            current = next((m for m in members if step in _tags(m)), None)
            if current is None:
                return None
            continue
        if isinstance(step, int):
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(step)
        if field is None:
            return None
        current = field.annotation
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        keys = list(current.model_fields)
        if issubclass(current, ExportOptions):  # options.output belongs to the build
            keys.remove("output")
        return keys
    return None


def _field_name(loc: tuple[int | str, ...]) -> str:
    out = ""
    for step in loc:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step in _union_tags() or step == "":
            continue
        else:
            out += f".{step}" if out else str(step)
    return out or "(recipe)"


def _message(err: Any) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {loc[-1]!r}{hint}"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    if kind == "union_tag_invalid":
        tags = ", ".join(sorted(_union_tags()))
        return f"unknown target kind {err['input'].get('kind')!r}; allowed: {tags}"
    if kind == "union_tag_not_found":
        return f"each target needs a kind; allowed: {', '.join(sorted(_union_tags()))}"
    if kind == "string_pattern_mismatch":
        return f"{err['input']!r} is not allowed: use lowercase letters, digits, '.', '_', '-'"
    return msg.removeprefix("Value error, ")


def _duplicate_keys(node: yaml.Node | None, path: str, where: str) -> list[str]:
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = f"{path}.{key.value}" if path else str(key.value)
            if key.value in seen:
                problems.append(
                    f"{where}:{_mark(key)}: {name}: duplicate key (first at line"
                    f" {seen[key.value].start_mark.line + 1})"
                )
            seen[key.value] = key
            problems += _duplicate_keys(value, name, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{i}]", where)
    return problems


def parse_recipe(text: str, where: str = "<recipe>") -> Recipe:
    """Validate YAML text; every problem becomes one `file:line:col: field: message` line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        raise InputError(f"{where}:{pos}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: a recipe is a YAML mapping (name:, targets:, ...)")
    problems = _duplicate_keys(root, "", where)
    if problems:
        raise InputError("invalid recipe:\n" + "\n".join(problems))
    try:
        return recipe_model().model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            node: yaml.Node | None
            if err["type"] == "extra_forbidden":
                node = _key_node(root, loc)
            else:
                node, _ = _find_node(root, loc)
            pos = _mark(node) if node is not None else "1:1"
            lines.append(f"{where}:{pos}: {_field_name(loc)}: {_message(err)}")
        raise InputError("invalid recipe:\n" + "\n".join(lines)) from None


def load_recipe(path: Path) -> LoadedRecipe:
    """Read and validate a recipe file, including the model name against the registry."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    recipe = parse_recipe(text, str(path))
    _check_model(recipe, text, str(path))
    return LoadedRecipe(recipe=recipe, path=path, sha256=hashlib.sha256(raw).hexdigest())


def _check_model(recipe: Recipe, text: str, where: str) -> None:
    """The model must be registered (the registry needs torch, so it is checked here, after the
    torch-free schema)."""
    from edgesam_export.device.models import list_specs

    names = [s.name for s in list_specs()]
    if recipe.model not in names:
        node, _ = _find_node(yaml.compose(text, Loader=yaml.SafeLoader), ("model",))
        pos = _mark(node) if node is not None else "1:1"
        raise InputError(
            f"invalid recipe:\n{where}:{pos}: model: unknown model {recipe.model!r};"
            f" allowed: {', '.join(names)}"
        )


def resolved(recipe: Recipe) -> dict[str, Any]:
    """The recipe with every default filled in, as JSON (what the manifest records)."""
    return json.loads(recipe.model_dump_json())


def select_targets(recipe: Recipe, only: list[str] | None) -> list[TargetBase]:
    targets: list[TargetBase] = list(recipe.targets)
    if not only:
        return targets
    unknown = [n for n in only if n not in recipe.target_names()]
    if unknown:
        raise InputError(
            f"recipe {recipe.name}: no target named {', '.join(map(repr, unknown))};"
            f" targets: {', '.join(recipe.target_names())}"
        )
    return [t for t in targets if t.name in only]


__all__ = [
    "LoadedRecipe",
    "Parity",
    "Recipe",
    "TargetBase",
    "Weights",
    "json_schema",
    "load_recipe",
    "parse_recipe",
    "recipe_model",
    "resolved",
    "select_targets",
    "target_entries",
]
