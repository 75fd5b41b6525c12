"""The house's floors: the framework names no model and imports neither components nor services;
components never import a service; no service package imports another service package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_WORDS = re.compile(r"\b(sana|flux|sdxl|kokoro|wan|hunyuan\w*|xfuser|pixart|sd3|yolo\w*|diffrhythm|qwen\w*|"
                         r"gemma|t5|clip|llama|matrix[-_ ]game)\b", re.IGNORECASE)


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def service_of(path: Path) -> str:
    rel = path.relative_to(ROOT / "deployments")
    return rel.parts[0].removesuffix(".py")


def test_the_framework_names_no_model_and_imports_no_layer_above() -> None:
    for path in (ROOT / "serve_app").rglob("*.py"):
        above = {m for m in imports(path) if m.split(".")[0] in ("components", "deployments")}
        assert not above, f"{path.relative_to(ROOT)} imports {above}"
        found = MODEL_WORDS.findall(path.read_text())
        assert not found, f"{path.relative_to(ROOT)} names models: {sorted(set(found))}"


def test_components_never_import_a_service() -> None:
    for path in (ROOT / "components").rglob("*.py"):
        services = {m for m in imports(path) if m.split(".")[0] == "deployments"}
        assert not services, f"{path.relative_to(ROOT)} imports {services}"


def test_no_service_imports_another_service() -> None:
    for path in (ROOT / "deployments").rglob("*.py"):
        own = service_of(path)
        others = {m for m in imports(path)
                  if m.startswith("deployments.") and m.split(".")[1] != own}
        assert not others, f"{path.relative_to(ROOT)} ({own}) imports {others}"


def test_the_framework_has_no_import_cycles() -> None:
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / "serve_app").rglob("*.py")}
    graph = {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
