"""`python -m dinov3nb` runs the command line."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["demo", "heatmap", "pca", "kmeans", "match", "export", "verify", "eval", "train", "submit", "list", "info",
            "convert"]


def run_module(*args, cwd):
    "Run `python -m dinov3nb ARGS` against this checkout."
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "dinov3nb", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_help_lists_the_commands(tmp_path):
    r = run_module("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: dinov3nb"), r.stdout
    for name in COMMANDS:
        assert name in r.stdout, f"`python -m dinov3nb --help` does not list {name}:\n{r.stdout}"


def test_exit_codes_pass_through(tmp_path):
    r = run_module("list", cwd=tmp_path)
    assert r.returncode == 0 and "dinov3_vits16" in r.stdout, r.stderr
    r = run_module("info", str(tmp_path / "missing.pth"), cwd=tmp_path)
    assert r.returncode == 2 and "dinov3nb info: error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
