"""`dinov3nb export` / `verify` and `kmeans --backend`: exported files are checked against torch from the shell."""
import re

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'dinov3nb[onnx]'")

from dinov3nb.models.checkpoints import save
from dinov3nb.cli import main
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig


@pytest.fixture
def weights(tmp_path, monkeypatch):
    "A tiny ViT saved as safetensors, and a cache folder of our own."
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save(DinoVisionTransformer(ViTConfig.tiny()).eval(), path)
    return path


def reported(text: str) -> tuple[float, float]:
    m = re.search(r"max abs diff ([0-9.e+-]+), min cosine similarity ([0-9.]+)", text)
    assert m, text
    return float(m.group(1)), float(m.group(2))


def test_export_onnx_then_verify(weights, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export", "onnx", "--weights", str(weights), "--out", str(out), "--height", "32", "--width", "48"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and out.exists()
    diff, cos = reported(text)
    assert diff <= 1e-4 and cos > 0.9999
    assert main(["verify", str(out), "--weights", str(weights)]) == 0
    text = capsys.readouterr().out
    assert "32x48, batch 1" in text and reported(text)[0] <= 1e-4


def test_dynamic_fp16_export_is_checked_at_two_sizes(weights, tmp_path, capsys):
    out = tmp_path / "half.onnx"
    args = ["export", "onnx", "--weights", str(weights), "--out", str(out), "--height", "32", "--width", "32",
            "--dynamic", "--fp16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "32x32, 32x64" in text
    assert reported(text)[1] > 0.99  # half precision: the direction of the features survives


def test_tensorrt_without_a_gpu_says_what_to_install(weights, tmp_path, capsys):
    if torch.cuda.is_available(): pytest.skip("a GPU is present: the TensorRT path is tested in test_runtime.py")
    assert main(["export", "tensorrt", "--weights", str(weights), "--out", str(tmp_path / "t.engine")]) == 2
    err = capsys.readouterr().err
    assert "TensorRT" in err and not (tmp_path / "t.onnx").exists()  # failed before exporting anything


def test_verify_a_missing_file(weights, capsys):
    assert main(["verify", "nowhere.onnx", "--weights", str(weights)]) == 2
    assert "dinov3nb export" in capsys.readouterr().err


def test_kmeans_video_through_onnxruntime(weights, synthetic_video, tmp_path, capsys):
    out = tmp_path / "seg.avi"
    assert main(["kmeans", "--video", str(synthetic_video), "--weights", str(weights), "--backend", "onnxruntime",
                 "-k", "3", "--size", "32", "--frames", "3", "--out", str(out)]) == 0
    assert "3 frames" in capsys.readouterr().out and out.exists()
