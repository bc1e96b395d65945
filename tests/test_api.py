"""The public import surface and the `dinov3nb` command line."""
import subprocess
import sys

import pytest
import torch

import dinov3nb


def test_public_names():
    for name in ["build", "list_backbones", "preprocess", "load_image", "make_transform", "DinoVisionTransformer",
                 "ViTConfig", "ConvNeXt", "ConvNeXtConfig", "load", "save", "save_hf", "accelerate", "export_onnx",
                 "OnnxRuntimeBackbone", "make_runtime", "TorchRuntime", "FastBackbone", *dinov3nb.list_backbones()]:
        if name.endswith("_sat493m"): continue  # reached through `dataset="sat493m"`
        assert hasattr(dinov3nb, name), name
    assert dinov3nb.__version__


def test_constructor_on_meta_allocates_nothing():
    model = dinov3nb.dinov3_vit7b16(device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 6_716_043_264


def test_end_to_end_on_a_photo():
    from skimage import data
    torch.manual_seed(0)
    model = dinov3nb.build("dinov3_convnext_tiny")
    x = dinov3nb.preprocess(data.astronaut(), size=64)
    with torch.inference_mode():
        out = model.forward_features(x)
    assert out["x_norm_patchtokens"].shape == (1, 4, 768)  # 64 px / 32 (ConvNeXt stride) = 2x2
    assert torch.isfinite(out["x_norm_clstoken"]).all()


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "import sys; from dinov3nb.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_list_and_demo(tmp_path):
    r = run_cli("list")
    assert r.returncode == 0 and "dinov3_convnext_large" in r.stdout
    r = run_cli("demo", "--size", "32", "--model", "dinov3_vits16", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "x_norm_patchtokens   (1, 6, 384)" in r.stdout and "cosine similarity" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["demo", "--image", "/nonexistent/cat.jpg"], "/nonexistent/cat.jpg"),
    (["demo", "--size", "0"], "size"),
])
def test_cli_bad_input_is_a_clear_error(args, message):
    r = run_cli(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
