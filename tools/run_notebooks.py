"""Execute notebooks in place, the way `nbdev-test --save` does, and record what was run.

Each notebook runs in its own process through nbdev's `test_nb` (so cells flagged with the
`tst_flags` of pyproject.toml, `#| slow` and `#| gpu`, and `#| eval: false` cells are skipped
exactly as `nbdev-test` skips them), is written back with its outputs only when every cell
passed, and is then cleaned with `nbdev-clean`. The notebook's metadata keeps a fingerprint of
its code cells' sources at the time of the run and how many cells had outputs
(`metadata.dinov3nb.run`; the key is listed in `allowed_metadata_keys` so `nbdev-clean` keeps
it): `tests/test_notebooks.py` fails for a notebook whose code was edited after its last run,
whose outputs were cleared since, or whose displaying cells have no output.

    python tools/run_notebooks.py nbs/A.ipynb nbs/B.ipynb   # run these
    python tools/run_notebooks.py --stale                   # run every notebook edited since its last run
    python tools/run_notebooks.py --changed                 # run notebooks that differ from git HEAD
    python tools/run_notebooks.py --all                     # run every notebook
    python tools/run_notebooks.py --stale --list            # only list what would run

Prints one line per notebook with its time; exits 1 if any notebook failed (its file is left
as it was). Progress bars are switched off while running (their rates differ on every run).
Only the JSON helpers below are needed by the CI check; nbdev is imported only to run.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
META_KEY = "dinov3nb"  # notebook metadata key; listed in [tool.nbdev] allowed_metadata_keys
SKIP_FLAGS = tuple(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"].get("tst_flags", "").split())
# ^ cells nbdev-test does not run (`#| slow`, `#| gpu`)
NB_BUDGET = 1_000_000  # bytes per notebook
REPO_BUDGET = 12_000_000  # bytes for all notebooks together

_directive = re.compile(r"^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")


# --- JSON-only helpers (used by tests/test_notebooks.py) ---------------------------------------

def notebooks() -> list[Path]:
    "Every notebook of the book, sorted."
    return sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))


def source(cell: dict) -> str:
    "`cell`'s source as one string."
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def directives(cell: dict) -> dict[str, str]:
    "The leading `#| name: value` directives of a code cell."
    out = {}
    for line in source(cell).splitlines():
        if not line.strip(): continue
        m = _directive.match(line)
        if not m: break
        out[m.group(1)] = m.group(2)
    return out


def fingerprint(nb: dict) -> str:
    "sha256 of the notebook's code cells' sources, in order (markdown and outputs do not count)."
    code = [source(c).strip() for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def recorded(nb: dict) -> str | None:
    "The fingerprint written at the notebook's last run, if any."
    return nb.get("metadata", {}).get(META_KEY, {}).get("run", {}).get("code_sha256")


def output_cells(nb: dict) -> int:
    "How many code cells carry outputs."
    return sum(bool(c.get("outputs")) for c in nb["cells"] if c["cell_type"] == "code")


def is_stale(nb: dict) -> bool:
    "True if the notebook's code differs from what its last run executed (or it never ran)."
    return recorded(nb) != fingerprint(nb)


def runs(cell: dict) -> bool:
    "True if `nbdev-test` (and so this tool) executes `cell`."
    d = directives(cell)
    return (cell["cell_type"] == "code" and not set(d) & set(SKIP_FLAGS)
            and d.get("eval", "true").lower() not in ("false", "0", "no"))


_SHOW_NAMES = {"print", "display", "show_doc", "Markdown", "HTML"}
_QUIET_CALLS = re.compile(r"^(test_\w*|assert_\w*|seed\w*|.*manual_seed|.*\.(savefig|close|append|update|extend|remove|clear|sort|"
                          r"reverse|insert|add_\w+|set_\w+|write\w*|unlink|mkdir|setdefault))$")


def _name(func: ast.AST) -> str:
    "Dotted name of a call's function (`plt.show`), or '' when it is not a plain name."
    parts = []
    while isinstance(func, ast.Attribute): parts.append(func.attr); func = func.value
    if isinstance(func, ast.Name): parts.append(func.id)
    else: return ""
    return ".".join(reversed(parts))


def _is_none_test(test: ast.AST, negated: bool) -> bool:
    "True if `test` is `x is None` (`x is not None` when `negated`): the skip-message idiom."
    return (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot if negated else ast.Is)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None)


def _top_calls(tree: ast.AST):
    """Call nodes that run when the cell runs normally: not in function or class bodies, `except`
    handlers, nor the branch taken when something optional is missing (`if x is None:` bodies,
    `else:` of `if x is not None:`)."""
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ExceptHandler)): continue
        if isinstance(n, ast.If):
            todo.append(n.test)
            if not _is_none_test(n.test, False): todo.extend(n.body)
            if not _is_none_test(n.test, True): todo.extend(n.orelse)
            continue
        if isinstance(n, ast.Call): yield n
        todo.extend(ast.iter_child_nodes(n))


def displays(cell: dict) -> bool:
    """True if running `cell` shows something, so a stored run must have an output.

    Either the last statement is a bare expression (not ended by `;`) that is not a
    `test_*`/`assert_*` call, a constant, or a call that returns None by convention (`savefig`,
    `close`, `append`, `remove`, `set_*`, `manual_seed`, ...), or the cell itself (not a function it
    defines, an `except` handler or an `if x is None:` branch) calls `print`, `display`, `show_doc` or a `*.show`/`show_*`
    function. Cells nbdev-test skips never count. Errs on the side of "does not display".
    """
    if not runs(cell): return False
    lines = [l for l in source(cell).splitlines() if not l.lstrip().startswith(("%", "!"))]
    try: tree = ast.parse("\n".join(lines))
    except SyntaxError: return False
    if not tree.body: return False
    last = tree.body[-1]
    if isinstance(last, ast.Expr) and not lines[last.end_lineno - 1].split("#")[0].rstrip().endswith(";"):
        v = last.value
        if isinstance(v, ast.Constant): pass
        elif isinstance(v, ast.Call) and _QUIET_CALLS.match(_name(v.func)): pass
        elif isinstance(v, (ast.Await, ast.Yield)): pass
        else: return True
    for call in _top_calls(tree):
        n = _name(call.func)
        leaf = n.rsplit(".", 1)[-1]
        if n in _SHOW_NAMES or leaf == "show" or leaf.startswith("show_"): return True
    return False


def has_output(cell: dict) -> bool:
    "True if the stored cell has at least one output."
    return bool(cell.get("outputs"))


def problems(path: Path) -> list[str]:
    "What is wrong with the stored run of the notebook at `path` (empty if nothing)."
    nb = json.loads(Path(path).read_text())
    out = []
    size = Path(path).stat().st_size
    if size > NB_BUDGET: out.append(f"{size:,} bytes, over the {NB_BUDGET:,}-byte budget per notebook")
    if is_stale(nb):
        out.append("code edited after its last run (or never run by tools/run_notebooks.py)" if recorded(nb)
                   else "no run recorded")
    n = nb.get("metadata", {}).get(META_KEY, {}).get("run", {}).get("cells_with_outputs")
    if n is not None and n != output_cells(nb):
        out.append(f"outputs removed or added since its last run: {n} cells had outputs, now {output_cells(nb)}")
    for i, c in enumerate(nb["cells"]):
        if displays(c) and not has_output(c):
            first = next((l for l in source(c).splitlines() if not l.startswith("#|")), "")
            out.append(f"cell {i} ({c.get('id')}) displays but has no output: {first[:60]!r}")
    return out


# --- running ----------------------------------------------------------------------------------

# progress bars print rates and times that change from run to run and machine to machine: keep them out of the
# stored outputs (tqdm reads TQDM_* defaults from the environment; transformers follows huggingface_hub's switch)
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

_CHILD = """
import sys
from nbdev.test import test_nb
ok, _ = test_nb(sys.argv[1], skip_flags=sys.argv[2].split(), basepath=sys.argv[3], save=True)
sys.exit(0 if ok else 1)
"""


def record(path: Path):
    "Clean the notebook at `path` with nbdev-clean and write its code fingerprint into its metadata."
    from nbdev.clean import nbdev_clean
    nbdev_clean(fname=str(path))
    nb = json.loads(path.read_text())
    nb.setdefault("metadata", {}).setdefault(META_KEY, {})["run"] = {"code_sha256": fingerprint(nb),
                                                            "cells_with_outputs": output_cells(nb)}
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    nbdev_clean(fname=str(path))
    assert not is_stale(json.loads(path.read_text())), f"{path}: fingerprint changed by nbdev-clean"


def run(path: Path, verbose: bool = False) -> tuple[bool, float]:
    "Execute the notebook at `path` in place in a fresh process; return (passed, seconds)."
    start = time.time()
    env = {**os.environ, **QUIET_ENV}
    res = subprocess.run([sys.executable, "-c", _CHILD, str(path), " ".join(SKIP_FLAGS), str(ROOT)],
                         cwd=path.parent, capture_output=not verbose, text=True, env=env)
    ok = res.returncode == 0
    if ok: record(path)
    elif not verbose: sys.stderr.write((res.stderr or "")[-6000:])
    return ok, time.time() - start


def changed() -> list[Path]:
    "Notebooks that differ from git HEAD (modified, added or untracked)."
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    names = git("diff", "--name-only", "HEAD", "--", "nbs") + git("ls-files", "--others", "--exclude-standard", "nbs")
    return sorted({ROOT / n for n in names if n.endswith(".ipynb") and (ROOT / n).exists()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run")
    p.add_argument("--all", action="store_true", help="run every notebook in nbs/")
    p.add_argument("--stale", action="store_true", help="run notebooks whose code changed since their last run")
    p.add_argument("--changed", action="store_true", help="run notebooks that differ from git HEAD")
    p.add_argument("--list", action="store_true", help="print the notebooks that would run, run nothing")
    p.add_argument("-j", "--jobs", type=int, default=1, help="notebooks run at once (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the cells' output")
    a = p.parse_args(argv)
    chosen = [x.resolve() for x in a.notebooks]
    if a.all: chosen += notebooks()
    if a.stale: chosen += [x for x in notebooks() if is_stale(json.loads(x.read_text()))]
    if a.changed: chosen += changed()
    if not (a.notebooks or a.all or a.stale or a.changed): p.error("name notebooks, or --all, --stale or --changed")
    missing = [str(x) for x in chosen if not x.is_file()]
    if missing: p.error(f"no such notebook: {', '.join(missing)}")
    chosen = sorted(set(chosen))
    if a.list or not chosen:
        for x in chosen: print(x.relative_to(ROOT) if x.is_relative_to(ROOT) else x)
        if not chosen: print("nothing to run")
        return 0
    failed, t0 = [], time.time()
    def one(x):
        ok, secs = run(x, a.verbose)
        print(f"{'ok  ' if ok else 'FAIL'} {secs:7.1f}s  {x.relative_to(ROOT) if x.is_relative_to(ROOT) else x}", flush=True)
        if not ok: failed.append(x)
    with ThreadPoolExecutor(max(1, a.jobs)) as ex: list(ex.map(one, chosen))
    print(f"{len(chosen) - len(failed)}/{len(chosen)} notebooks ran in {time.time() - t0:.0f}s")
    if failed: print("failed (left unchanged): " + " ".join(x.name for x in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
