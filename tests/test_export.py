"""ONNX export and the ONNX Runtime backbone: no `If`/`Tile` nodes, no mask input, dynamic shapes, parity with torch."""
import json

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'dinov3nb[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'dinov3nb[onnx]'")

from dinov3nb.models.backbones import build
from dinov3nb.models.convnext import ConvNeXt
from dinov3nb.deploy.export import OnnxRuntimeBackbone, accelerate, export_onnx, op_counts, verify_backend
from dinov3nb.models.vit import DinoVisionTransformer

KEYS = ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens")


def reference_model(reference_dir, case: str) -> torch.nn.Module:
    "Build a reference case from the manifest and load its official weights strictly."
    from safetensors.torch import load_file
    entry = json.loads((reference_dir / "manifest.json").read_text())["cases"][case]
    cls = ConvNeXt if entry["kind"] == "convnext" else DinoVisionTransformer
    model = cls(**entry["constructor_kwargs"]).eval()
    state = {k[6:]: v for k, v in load_file(reference_dir / f"{case}.safetensors").items() if k.startswith("state.")}
    model.load_state_dict(state, strict=True)
    return model


def assert_matches_torch(model, path, shapes, atol=1e-4):
    "Run the ONNX file at `path` on random images of each shape and compare every output with torch."
    backend = OnnxRuntimeBackbone(path)
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad(): ref = model.forward_features(x)
        got = backend(x)
        for k in KEYS:
            assert got[k].shape == ref[k].shape, (k, shape)
            diff = (got[k] - ref[k]).abs().max().item() if ref[k].numel() else 0.0
            assert diff <= atol, f"{k} at {shape}: max abs diff {diff}"


def assert_clean_graph(path):
    ops = op_counts(path)
    assert ops["If"] == 0 and ops["Tile"] == 0, ops
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixel_values"]  # no mask input
    onnx.checker.check_model(onnx.load(str(path)))


@pytest.mark.parametrize("case, shapes", [
    ("vit_mlp_reg4", [(2, 3, 64, 96), (1, 3, 48, 48)]),
    ("vit_swiglu", [(2, 3, 64, 96), (1, 3, 48, 48)]),
    ("vit_7b_like", [(2, 3, 64, 96), (1, 3, 48, 48)]),
    ("convnext_mini", [(2, 3, 128, 192), (1, 3, 96, 96)]),
])
def test_reference_cases_export_dynamic(reference_dir, tmp_path, case, shapes):
    model = reference_model(reference_dir, case)
    path = export_onnx(model, tmp_path / f"{case}.onnx", height=shapes[1][2], width=shapes[1][3])
    assert_clean_graph(path)
    assert_matches_torch(model, path, shapes)  # a non-square and a square size through one dynamic file


def test_vits16_full_size_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    model = build("dinov3_vits16").eval()
    path = export_onnx(model, tmp_path / "vits16.onnx")
    assert_clean_graph(path)
    assert_matches_torch(model, path, [(1, 3, 224, 224), (2, 3, 160, 288)])
    report = verify_backend(model, OnnxRuntimeBackbone(path))  # real photos, two resolutions
    assert report["max_abs_diff"] <= 1e-4 and report["min_cosine"] > 0.99999, report


def test_dynamo_exporter_gives_the_same_clean_graph(reference_dir, tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (in the onnx extra)")
    model = reference_model(reference_dir, "vit_mlp_reg4")
    path = export_onnx(model, tmp_path / "dynamo.onnx", height=48, width=48, exporter="dynamo")
    assert_clean_graph(path)
    assert_matches_torch(model, path, [(2, 3, 64, 96), (1, 3, 48, 48)])


def test_static_export_and_intermediate_layers(reference_dir, tmp_path):
    model = reference_model(reference_dir, "vit_swiglu")
    path = export_onnx(model, tmp_path / "static.onnx", height=48, width=64, batch_size=2, dynamic=False,
                       intermediate_layers=[0])
    assert_clean_graph(path)
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert outputs == ["cls", "registers", "patch", "layer0"]
    x = torch.randn(2, 3, 48, 64)
    got = OnnxRuntimeBackbone(path)(x)
    with torch.no_grad(): ref = model.get_intermediate_layers(x, n=[0])[0]
    assert (got["layer0"] - ref).abs().max() <= 1e-4


def test_fp16_conversion_keeps_fp32_io(reference_dir, tmp_path):
    model = reference_model(reference_dir, "vit_mlp_reg4")
    path = export_onnx(model, tmp_path / "half.onnx", height=48, width=48, fp16=True)
    graph = onnx.load(str(path)).graph
    weights = [t for t in graph.initializer if t.dims and len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)


def test_accelerate_caches_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path))
    torch.manual_seed(0)
    from dinov3nb.models.vit import ViTConfig
    model = DinoVisionTransformer(ViTConfig.tiny()).eval()
    first = accelerate(model)
    assert first.path.parent == tmp_path / "onnx"
    assert accelerate(model).path == first.path
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad(): assert (first(x)["x_norm_patchtokens"] - model.forward_features(x)["x_norm_patchtokens"]).abs().max() <= 1e-4
    assert not list((tmp_path / "onnx").glob("*.tmp.onnx"))  # written atomically


def test_bad_inputs_get_clear_errors(tmp_path):
    from dinov3nb.models.vit import ViTConfig
    model = DinoVisionTransformer(ViTConfig.tiny()).eval()
    with pytest.raises(ValueError, match="multiples of 16"): export_onnx(model, tmp_path / "a.onnx", height=40)
    with pytest.raises(ValueError, match="opset"): export_onnx(model, tmp_path / "a.onnx", opset=13)
    with pytest.raises(FileNotFoundError, match="export_onnx"): OnnxRuntimeBackbone(tmp_path / "none.onnx")
    path = export_onnx(model, tmp_path / "ok.onnx", height=32, width=32)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"): OnnxRuntimeBackbone(path)(torch.randn(3, 32, 32))
