"""Every notebook is stored executed: its displaying cells have outputs, its code has not changed
since its last run by `tools/run_notebooks.py`, and it stays within the size budgets.
Reads JSON only; the fix for a failure is `python tools/run_notebooks.py nbs/X.ipynb` (or `--stale`)."""
import json
import shutil

import pytest

from tools.run_notebooks import (META_KEY, NB_BUDGET, REPO_BUDGET, displays, fingerprint, notebooks, problems,
                                 recorded)

NBS = notebooks()
SAMPLE = "01_models.vit.ipynb"  # a real notebook with pictures and tables


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_stored_executed(path):
    found = problems(path)
    assert not found, (f"{path.name}: " + "; ".join(found) +
                       f"\n  fix: python tools/run_notebooks.py nbs/{path.name}   (then commit)")


def test_notebooks_within_repo_budget():
    sizes = {p.name: p.stat().st_size for p in NBS}
    biggest = sorted(sizes, key=sizes.get)[-3:]
    assert sum(sizes.values()) <= REPO_BUDGET, f"notebooks take {sum(sizes.values()):,} bytes in all, over " \
        f"{REPO_BUDGET:,}; biggest: {[(n, sizes[n]) for n in biggest]}"
    assert all(s <= NB_BUDGET for s in sizes.values())


def _copy(tmp_path, edit):
    "A copy of the sample notebook in `tmp_path`, changed by `edit(nb)`."
    nb = json.loads((NBS[0].parent / SAMPLE).read_text())
    edit(nb)
    out = tmp_path / SAMPLE
    out.write_text(json.dumps(nb, indent=1))
    return out


def test_real_sample_passes(tmp_path):
    assert problems(_copy(tmp_path, lambda nb: None)) == []


def test_cleared_notebook_fails(tmp_path):
    def clear(nb):
        for c in nb["cells"]:
            if c["cell_type"] == "code": c["outputs"] = []
    found = problems(_copy(tmp_path, clear))
    assert any("displays but has no output" in f for f in found), found
    assert any("outputs removed or added since its last run" in f for f in found), found


def test_one_cleared_display_cell_fails(tmp_path):
    def clear_last_display(nb):
        [c for c in nb["cells"] if displays(c)][-1]["outputs"] = []
    found = problems(_copy(tmp_path, clear_last_display))
    assert len(found) == 2 and "displays but has no output" in found[1], found


def test_edited_notebook_fails(tmp_path):
    def edit(nb):
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        code[-1]["source"] = "".join(code[-1]["source"]) + "\nx = 1"
    assert any("edited after its last run" in f for f in problems(_copy(tmp_path, edit)))


def test_markdown_edit_is_not_stale(tmp_path):
    def edit(nb): next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"] += "\nMore prose."
    assert problems(_copy(tmp_path, edit)) == []


def test_never_run_notebook_fails(tmp_path):
    found = problems(_copy(tmp_path, lambda nb: nb["metadata"].pop(META_KEY)))
    assert found == ["no run recorded"], found


def test_oversized_notebook_fails(tmp_path):
    def pad(nb): nb["cells"].append({"cell_type": "markdown", "id": "pad", "metadata": {}, "source": "x" * NB_BUDGET})
    assert any("budget per notebook" in f for f in problems(_copy(tmp_path, pad)))


def test_fingerprint_survives_nbdev_clean(tmp_path):
    "nbdev-clean keeps `metadata.dinov3nb` (allowed_metadata_keys in pyproject.toml) and the code it hashes."
    from nbdev.clean import nbdev_clean
    path = shutil.copy(NBS[0].parent / SAMPLE, tmp_path / SAMPLE)
    nb = json.loads(path.read_text())
    nb["metadata"]["widgets"], nb["metadata"]["language_info"] = {}, {"name": "python"}  # extra metadata to strip
    path.write_text(json.dumps(nb, indent=1))
    nbdev_clean(fname=str(path))
    nb = json.loads(path.read_text())
    assert "language_info" not in nb["metadata"]
    assert recorded(nb) == fingerprint(nb)


def _cell(src, **kw):
    return {"cell_type": "code", "metadata": {}, "outputs": [], "source": src, **kw}


@pytest.mark.parametrize("src", [
    "x", "x.shape", "df.head()", "print(1)", "fig, ax = plt.subplots()\nplt.show()", "show_doc(f)",
    "for i in range(3): print(i)", "a = 1\nshow_pictures(a)", "Markdown(table)", "if r is not None: print(r)",
    "if r is None: pass\nelse: print(r)",
])
def test_displaying_cells(src):
    assert displays(_cell(src))


@pytest.mark.parametrize("src", [
    "x = 1", "import torch", "def f(): print(1)", "class A: pass", "test_eq(1, 1)", "assert x",
    "model.eval();", "torch.manual_seed(0)", "fig.savefig(p)", "if x is None: print('skipped')",
    "#| slow\nx", "#| eval: false\nx", "#| export\ndef f(): return 1", "xs.append(1)", "hook.remove()", "",
    "#| gpu\nprint(1)", "!ls", "'a docstring'", "try: f()\nexcept E as e: print(e)",
])
def test_quiet_cells(src):
    assert not displays(_cell(src))
