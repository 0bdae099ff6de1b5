"""The artifact workflow: it parses, builds every shipped recipe, and names what exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "artifacts.yml"


def _workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_workflow_parses_with_a_linux_matrix_and_a_macos_job() -> None:
    wf = _workflow()
    assert {"push", "pull_request", "workflow_dispatch"} <= set(wf["on"])
    jobs = wf["jobs"]
    assert jobs["build"]["runs-on"].startswith("ubuntu")
    assert jobs["macos"]["runs-on"].startswith("macos")
    for job in jobs.values():
        uses = [s.get("uses", "") for s in job["steps"]]
        assert any(u.startswith("actions/checkout@") for u in uses)
        setup = next(
            s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python")
        )
        assert setup["with"]["cache"] == "pip"
        upload = next(
            s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
        )
        assert upload["if"] == "always()" and "build-out" in upload["with"]["path"]


def test_matrix_builds_every_shipped_recipe() -> None:
    matrix = _workflow()["jobs"]["build"]["strategy"]["matrix"]["include"]
    names = [row["recipe"] for row in matrix]
    shipped = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert sorted(names) == shipped
    runs = " ".join(_runs(_workflow()["jobs"]["build"]))
    assert "RECIPES=recipes/${{ matrix.recipe }}.yaml" in runs


def test_every_recipe_path_and_make_target_named_exists() -> None:
    text = WORKFLOW.read_text() + (ROOT / "Makefile").read_text()
    for rel in set(re.findall(r"recipes/[\w.-]+\.yaml", text)):
        assert (ROOT / rel).is_file(), rel
    targets = _make_targets()
    for job in _workflow()["jobs"].values():
        for run in _runs(job):
            for target in re.findall(r"\bmake\s+([a-z][\w-]*)", run):
                assert target in targets, f"make {target} is not in the Makefile"
    assert "artifacts" in targets


def test_make_artifacts_builds_then_verifies() -> None:
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\nartifacts:", 1)[1].split("\n\n", 1)[0]
    assert "edgesam-export build $(RECIPES)" in recipe
    assert "edgesam-export verify $(BUILD)" in recipe
    assert recipe.index(" build ") < recipe.index(" verify ")
    default = re.search(r"^RECIPES \?= (.*)$", text, flags=re.M)
    assert default is not None
    for rel in default.group(1).split():
        assert (ROOT / rel).is_file(), rel
