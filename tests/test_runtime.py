"""Inference runtimes: one interface over torch, ONNX Runtime and TensorRT."""
import pytest
import torch

from dinov3nb.deploy.runtime import Runtime, TorchRuntime, make_runtime, shape_profile
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig


def tiny_vit():
    torch.manual_seed(0)
    return DinoVisionTransformer(ViTConfig.tiny()).eval()


def test_every_cpu_runtime_gives_the_torch_features(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path))
    model, x = tiny_vit(), torch.randn(2, 3, 48, 32)
    with torch.no_grad(): ref = model.forward_features(x)
    for name in ("torch", "onnxruntime"):
        rt = make_runtime(name, model)
        assert isinstance(rt, Runtime)
        out = rt(x)
        for k in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens"):
            assert out[k].dtype == torch.float32 and (out[k] - ref[k]).abs().max() <= 1e-4, (name, k)


def test_torch_runtime_options():
    model, x = tiny_vit(), torch.randn(1, 3, 32, 32)
    with torch.no_grad(): ref = model.forward_features(x)["x_norm_patchtokens"]
    out = TorchRuntime(model, channels_last=True)(x)["x_norm_patchtokens"]
    assert (out - ref).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="needs a GPU"): TorchRuntime(model, dtype=torch.float16)
    half = TorchRuntime(tiny_vit(), dtype=torch.bfloat16)(x)["x_norm_patchtokens"]
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(half, ref, dim=-1).min() > 0.98  # bf16 keeps the direction


def test_unknown_runtime_and_missing_tensorrt_say_what_to_do():
    with pytest.raises(ValueError, match="onnxruntime"): make_runtime("tflite", tiny_vit())
    try:
        import tensorrt  # noqa: F401
        has_trt = torch.cuda.is_available()
    except ImportError:
        has_trt = False
    if not has_trt:
        with pytest.raises((ImportError, RuntimeError), match="TensorRT"): make_runtime("tensorrt", tiny_vit())


def test_shape_profile_rounds_to_the_stride():
    assert shape_profile([(230, 300)], stride=16) == {"min": (1, 3, 224, 304), "opt": (1, 3, 224, 304), "max": (1, 3, 224, 304)}
    with pytest.raises(ValueError): shape_profile([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs an NVIDIA GPU")
def test_tensorrt_fp16_engine_matches_torch(tmp_path, monkeypatch):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (JetPack, or pip install tensorrt)")
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path))
    from dinov3nb.models.backbones import build
    from dinov3nb.deploy.export import verify_backend
    model = build("dinov3_vits16").eval()
    rt = make_runtime("tensorrt", model, sizes=[(224, 224), (160, 288)], fp16=True)
    report = verify_backend(model, rt)  # real photos, two resolutions
    assert report["min_cosine"] >= 0.999, report
