"""The package's shape: chapters as layers, no import cycles, small modules."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dinov3nb"
# a chapter may import its own modules and those of lower layers; never a higher layer's, nor
# another chapter of its own layer (deploy and heads stand side by side, so do eval and jetson); train sits above
# heads, so that it can train them (dino.txt's alignment, depth heads)
# `errors` (the command-line error policy) sits below everything: any chapter may raise its `UserError`
LAYERS = {"errors": -1, "models": 0, "shapesworld": 1, "deploy": 2, "heads": 2, "train": 3, "eval": 4, "jetson": 4, "cli": 5,
          "testing": 6}
MAX_LINES = 400


def module_name(path:Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path:Path) -> set[str]:
    "Every `dinov3nb` module `path` imports, at module level or inside functions, relative imports resolved."
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dinov3nb"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else: mod = node.module or ""
            if mod.split(".")[0] != "dinov3nb": continue
            for a in node.names:  # `from dinov3nb.models import checkpoints` imports a module
                sub = f"{mod}.{a.name}"
                found.add(sub if _exists(sub) else mod)
    return found - {name}


def _exists(mod:str) -> bool:
    p = PKG.parent.joinpath(*mod.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PKG.rglob("*.py")) if p.name != "_modidx.py"}


def chapter(mod:str) -> str|None:
    parts = mod.split(".")
    if len(parts) == 1: return None
    return "cli" if parts[1] == "__main__" else parts[1]  # `python -m dinov3nb` is the command line  # None: the package root `dinov3nb` (the public facade)


def find_cycle(graph:dict[str, set[str]]) -> list[str]|None:
    "A list of modules forming an import cycle, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = "open"; stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open": return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = "done"; stack.pop()
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return None


def test_find_cycle_sees_a_cycle_through_a_lazy_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_and_package_imports_are_resolved():
    found = imported_modules(PKG / "eval" / "features.py")  # `from ..deploy.export import model_fingerprint`
    assert "dinov3nb.deploy.export" in found and all(_exists(m) for m in found), found


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def layer_violations(graph:dict[str, set[str]]) -> list[str]:
    "Imports that go up a layer, across chapters of one layer, or through the package root."
    bad = []
    for mod, deps in graph.items():
        if chapter(mod) is None: continue
        for dep in sorted(deps):
            if chapter(dep) is None:
                bad.append(f"{mod} imports the package root {dep}: import the defining module instead")
            elif LAYERS[chapter(dep)] > LAYERS[chapter(mod)] or (
                    LAYERS[chapter(dep)] == LAYERS[chapter(mod)] and chapter(dep) != chapter(mod)):
                bad.append(f"{mod} (layer {LAYERS[chapter(mod)]}) imports {dep} (layer {LAYERS[chapter(dep)]})")
    return bad


def test_layer_violations_are_named():
    graph = {"dinov3nb.models.vit": {"dinov3nb.train.losses"}, "dinov3nb.eval.dense": {"dinov3nb.jetson.plots"},
             "dinov3nb.train.losses": {"dinov3nb.models.vit", "dinov3nb"}, "dinov3nb.cli": {"dinov3nb.eval.cli"}}
    assert layer_violations(graph) == [
        "dinov3nb.models.vit (layer 0) imports dinov3nb.train.losses (layer 3)",
        "dinov3nb.eval.dense (layer 4) imports dinov3nb.jetson.plots (layer 4)",
        "dinov3nb.train.losses imports the package root dinov3nb: import the defining module instead"]


def test_lower_layers_never_import_higher_ones():
    bad = layer_violations(import_graph())
    assert not bad, "\n".join(bad)


def test_every_chapter_has_a_layer():
    assert {chapter(m) for m in import_graph()} - {None} <= set(LAYERS)


def test_library_chapters_do_not_import_test_support():
    users = [m for m, deps in import_graph().items() if chapter(m) != "testing" and any(chapter(d) == "testing" for d in deps)]
    assert users == []


@pytest.mark.parametrize("path", sorted(p for p in PKG.rglob("*.py") if p.name != "_modidx.py"), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_are_small(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG.parent)} has {n} lines (at most {MAX_LINES}): split it by concept"


def test_every_subpackage_is_packaged():
    "A wheel holds every chapter: `packages.find` must match each folder with an `__init__.py`."
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from setuptools import find_packages
    cfg = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = set(find_packages(str(PKG.parent), include=cfg["include"]))
    folders = {module_name(p) for p in PKG.rglob("__init__.py")}
    assert folders - packaged == set(), f"not in the wheel: {sorted(folders - packaged)}"
