"""Shared pytest set-up: the `--runslow` switch and the official reference outputs."""
from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked `slow`")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"): return
    skip = pytest.mark.skip(reason="slow test: run with `pytest --runslow` or `DINOV3NB_SLOW=1 bash tests/run.sh`")
    for item in items:
        if "slow" in item.keywords: item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    "Return the folder of official reference outputs (`../shared/reference` beside the checkout), or skip."
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"official reference outputs not found at {REFERENCE_DIR}: "
                    "put the `shared/` folder beside the repository checkout to run parity tests")
    return REFERENCE_DIR


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
