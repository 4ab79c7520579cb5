"""docs/LAYOUT.md's arrows, checked over the source with `ast`: no import cycles (imports inside functions
count too), models import nothing of the project, data imports only data, io, errors and the version, and
errors and io sit at the bottom."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepearth_jax"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (`from pkg import sub` counts as `pkg.sub`)."""
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                found |= subs & modules.keys()
                if subs - modules.keys():
                    found.add(node.module)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    assert _cycle(_imports(_modules())) is None


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_nothing_imports_upward():
    graph = _imports(_modules())
    bottom = {"deepearth_jax", "deepearth_jax.errors", "deepearth_jax.io"}  # the root only for __version__
    wrong = []
    for name, deps in sorted(graph.items()):
        if name.startswith("deepearth_jax.models."):
            wrong += [f"{name} -> {d}" for d in deps if not d.startswith("deepearth_jax.models")]
        elif name.startswith("deepearth_jax.data") and name != "deepearth_jax.data.__main__":
            wrong += [
                f"{name} -> {d}" for d in deps if not d.startswith("deepearth_jax.data") and d not in bottom
            ]
    wrong += [f"deepearth_jax.errors -> {d}" for d in graph["deepearth_jax.errors"]]
    wrong += [f"deepearth_jax.io -> {d}" for d in graph["deepearth_jax.io"] - {"deepearth_jax.errors"}]
    assert wrong == []
