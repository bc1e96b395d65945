"""README.md stays what `nbs/index.ipynb` renders to, and CI runs exactly its set-up commands."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands(readme: str) -> list[str]:
    "Return the command lines of the ```bash block under `## Set up` in `readme`."
    section = readme.split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no ```bash block under `## Set up`"
    return [l.strip() for l in block.group(1).splitlines() if l.strip()]


def _ci_commands(script: str) -> list[str]:
    "Return the command lines of `.ci/run` after its set-up preamble (shebang, comments, `set`, `cd`, versions)."
    preamble = ("set ", "cd ", "python --version", "pip --version")
    return [l.strip() for l in script.splitlines()
            if l.strip() and not l.lstrip().startswith("#") and not l.strip().startswith(preamble)]


def test_ci_runs_exactly_the_readme_commands():
    readme = _setup_commands((ROOT / "README.md").read_text())
    ci = _ci_commands((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2, readme
    assert ci == readme, f".ci/run runs {ci}, README.md says {readme}"


def test_readme_is_rendered_from_index_notebook():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "readme.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_readme_parameter_counts_match_official(reference_dir):
    official = json.loads((reference_dir / "official_hub_keys.json").read_text())
    rows = dict(re.findall(r"^\| `(dinov3_\w+)` \|[^|]*\| ([\d,]+) \|", (ROOT / "README.md").read_text(), re.M))
    assert set(official) <= set(rows), f"README table lacks {set(official) - set(rows)}"
    for name, info in official.items():
        assert int(rows[name].replace(",", "")) == info["n_params"], name


def test_sidebar_lists_every_notebook():
    import fnmatch, re
    root = Path(__file__).resolve().parents[1]
    text = (root / "nbs" / "sidebar.yml").read_text()
    listed = re.findall(r"^\s+- (\S+\.ipynb)\s*$", text, re.M)
    globs = re.findall(r'contents: "(\S+\*\.ipynb)"', text)
    missing = [n for n in listed if not (root / "nbs" / n).exists()]
    assert not missing, f"sidebar.yml lists notebooks that do not exist: {missing}"
    unlisted = sorted(p.name for p in (root / "nbs").glob("*.ipynb")
                      if p.name not in listed and not any(fnmatch.fnmatch(p.name, g) for g in globs))
    assert not unlisted, f"notebooks missing from sidebar.yml: {unlisted}"
