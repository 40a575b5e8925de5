"""The data flows one way: no import cycle among ONP's modules (read from the source, not run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("onp", "envs", "agents")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """ONP modules ``path`` imports anywhere in it (``from pkg import sub`` counts as ``sub``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif node.module in known:
                    found.add(node.module)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module], path[len(path):] = 1, [module]
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the ONP modules it imports; a package's ``__init__`` re-exports are skipped."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        edges = _imports(path, known)
        if path.name == "__init__.py":  # a package importing its own submodules to register them
            edges = {e for e in edges if not e.startswith(f"{name}.")}
        graph[name] = edges - {name}
    return graph


def test_the_walker_finds_a_cycle_when_there_is_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_no_module_of_onp_envs_or_agents_is_part_of_an_import_cycle() -> None:
    graph = import_graph()
    assert "onp.repair.pipeline" in graph and "onp.repair.report" in graph["onp.repair.pipeline"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


# The layers, bottom first: a module may import its own layer and the ones below, never above.
# docs/architecture.md draws the same list.
LAYERS = (
    ("foundation", ("onp", "onp.errors", "onp.io", "onp.seeding", "onp.fingerprint", "onp.config",
                    "onp.outputs")),
    ("data", ("onp.data",)),
    ("models", ("onp.models",)),
    ("metrics", ("onp.eval",)),
    ("training", ("onp.training",)),
    ("attacks", ("onp.attacks",)),
    ("graph", ("onp.graph",)),
    ("signal", ("onp.signal",)),
    ("task", ("onp.task", "onp.subjects")),
    ("env", ("envs",)),
    ("agent", ("agents", "onp.policies")),
    ("repair", ("onp.repair",)),
    ("defenses", ("onp.defenses",)),
    ("suite", ("onp.suite",)),
    ("commands", ("onp.cli", "onp.apply", "onp.detect", "onp.attack", "onp.train_agent",
                  "onp.benchmark", "onp.api", "onp.reference")),
)


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names ``module`` (or its package)."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS)
               for prefix in prefixes if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return max(matches)[1]


def test_every_import_stays_in_its_layer_or_goes_down() -> None:
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} "
              f"({LAYERS[layer_of(target)][0]})"
              for module, targets in sorted(import_graph().items()) for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []
    assert layer_of("onp.repair.pipeline") > layer_of("agents.ppo") > layer_of("onp.graph.mask")


def test_the_architecture_page_lists_the_layers_in_order() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    positions = [page.index(f"**{name}**") for name, _ in LAYERS]
    assert positions == sorted(positions)
