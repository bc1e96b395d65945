"""`FastBackbone` (07a_deploy.fast_backbone): its cases live in `fast_backbone_cases.py` and run in a pytest process
of their own. In one process with the rest of the suite, the OpenVINO and ONNX Runtime sessions they build (every
precision, per-layer exports, ConvNeXt) left the heap corrupted on an AMD EPYC host: a later, unrelated test died
in `malloc` (SIGSEGV, 2026-12-06; each half of the suite alone passed). A child process keeps that out of the rest."""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
HERE = Path(__file__).resolve().parent


def test_fast_backbone_cases_in_a_child_process():
    r = subprocess.run([sys.executable, "-m", "pytest", str(HERE / "fast_backbone_cases.py"), "-q", "-rs", "-p", "no:cacheprovider"],
                       cwd=HERE.parent, capture_output=True, text=True, timeout=1200)
    print(r.stdout[-6000:])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout.splitlines()[-1] and "failed" not in r.stdout.splitlines()[-1]
