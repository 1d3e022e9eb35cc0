"""The floors of docs/architecture.md, enforced: what may import what, and no import circle.

Read from the source (ast), so the test is fast and sees lazy imports inside functions too.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("labels", "features", "ltr")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            base = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)] if n.level else []
            m = ".".join(base + ([n.module] if n.module else []))
            out.add(m)
            out.update(f"{m}.{a.name}" for a in n.names if f"{m}.{a.name}" in mods)
    return {m for m in out if m in mods}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, mods) for n, p in mods.items()}


def _floor(module: str) -> int:
    """0: ltr.data (schemas, IO, the shared arithmetic); 1: labels, ltr.sim; 2: features; 3: the rest of ltr."""
    if module.startswith("ltr.data"):
        return 0
    if module.startswith(("labels", "ltr.sim")):
        return 1
    if module.startswith("features"):
        return 2
    return 3


def test_dependencies_point_down():
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if _floor(dep) > _floor(mod) or dep == "ltr.cli":
                bad.append(f"{mod} -> {dep}")
            elif mod.split(".")[0] in ("labels", "features") and dep.startswith("ltr.sim"):
                bad.append(f"{mod} -> {dep} (no feature or label code depends on simulated data)")
            elif mod.startswith("ltr.sim") and dep.startswith("labels"):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the floors of docs/architecture.md:\n" + "\n".join(sorted(bad))


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(v: str, stack: list[str]) -> None:
        state[v] = 1  # on the current path
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                found.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w, stack + [w])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])
    return found


def test_no_import_circle():
    assert not _circles(_graph())


def test_the_checks_can_fail(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("from ltr.cli import app\nimport ltr.train\nfrom . import schemas\n")
    got = _imports("ltr.data.x", p, _modules() | {"ltr.data.x": p})
    assert got == {"ltr.cli", "ltr.train", "ltr.data", "ltr.data.schemas"}
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
