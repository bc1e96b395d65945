"""Shared pytest set-up: the `--runslow` switch and the official reference outputs."""
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked `slow`")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"): return
    skip = pytest.mark.skip(reason="slow test: run with `pytest --runslow` or `DINOV3NB_SLOW=1 bash tests/run.sh`")
    for item in items:
        if "slow" in item.keywords: item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    "Return the folder of official reference outputs (`dinov3nb.testing.reference_dir`), or skip."
    from dinov3nb.testing import reference_dir as find_reference_dir
    ref = find_reference_dir()
    if ref is None:
        pytest.skip("official reference outputs not found: put the `shared/` folder (with shared/reference/manifest.json) "
                    "beside the repository checkout to run parity tests")
    return ref


@pytest.fixture
def synthetic_video(tmp_path) -> Path:
    "A 4-frame 64x96 mp4 panning over a photo (needs OpenCV, the jetson extra)."
    pytest.importorskip("cv2", reason="OpenCV is not installed: pip install 'dinov3nb[jetson]'")
    from dinov3nb.jetson.camera import SyntheticSource, VideoSink
    path = tmp_path / "in.mp4"
    sink = VideoSink(path, fps=5)
    for frame in SyntheticSource(4, size=(64, 96)): sink(frame)
    sink.close()
    return path
