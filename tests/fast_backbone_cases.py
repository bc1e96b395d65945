"""`FastBackbone`: the torch backbone's interface on the CPU fast path, and `--backend auto` in the commands."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
from dinov3nb.deploy.fast import choose, cpu_isa, has_openvino  # noqa: E402
from dinov3nb.deploy.fast_backbone import FastBackbone  # noqa: E402
from dinov3nb.errors import UserError  # noqa: E402
from dinov3nb.testing import blocks_matter  # noqa: E402
from dinov3nb.models.transforms import preprocess  # noqa: E402
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig  # noqa: E402


def runnable_precisions():
    "The precisions this host can run, each with the reason a skipped one is skipped."
    isa, ov = cpu_isa(), has_openvino()
    out = [pytest.param("auto"), pytest.param("fp32")]
    for p, ok, why in (("bf16", isa.bf16 and ov, f"bf16 needs AMX or AVX512-BF16 and OpenVINO; this CPU ({isa}), OpenVINO {ov}"),
                       ("int8", ov, "int8 needs OpenVINO (pip install 'dinov3nb[openvino]')")):
        out.append(pytest.param(p, marks=() if ok else pytest.mark.skip(reason=why)))
    return out


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    import skimage.data
    torch.manual_seed(0)
    vit = blocks_matter(DinoVisionTransformer(ViTConfig.tiny(embed_dim=128, depth=4, num_heads=2)))
    gray = lambda im: np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
    photos = torch.cat([preprocess(gray(getattr(skimage.data, n)()), size=(64, 96)) for n in ("cat", "brick", "logo")])
    return dict(vit=vit, photos=photos, folder=tmp_path_factory.mktemp("fastbackbone"))


def min_cos(a, b):
    if a.ndim == 4: a, b = a.flatten(2).transpose(1, 2), b.flatten(2).transpose(1, 2)
    assert a.shape == b.shape
    return F.cosine_similarity(a, b, dim=-1).min().item()


@pytest.mark.parametrize("precision", runnable_precisions())
def test_features_match_torch(setting, precision, capsys):
    vit, x = setting["vit"], setting["photos"]
    fast = FastBackbone(vit, "auto", precision, folder=setting["folder"])
    assert f"dinov3nb.accelerate: {fast.choice}" in capsys.readouterr().out       # one line: what and why
    with torch.no_grad():
        ref = vit.forward_features(x)
        want = vit.get_intermediate_layers(x, n=[1, 3], reshape=True, return_class_token=True, return_extra_tokens=True)
    got = fast.forward_features(x)
    assert min_cos(got["x_norm_patchtokens"], ref["x_norm_patchtokens"]) >= 0.995, fast.choice
    assert min_cos(got["x_norm_clstoken"][:, None], ref["x_norm_clstoken"][:, None]) >= 0.995
    have = fast.get_intermediate_layers(x, n=[1, 3], reshape=True, return_class_token=True, return_extra_tokens=True)
    for h, w in zip(have, want):
        assert [t.shape for t in h] == [t.shape for t in w]
        assert min(min_cos(h[0], w[0]), min_cos(h[1][:, None], w[1][:, None]), min_cos(h[2], w[2])) >= 0.995, fast.choice
    (last,) = fast.get_intermediate_layers(x, n=1)
    assert min_cos(last, ref["x_norm_patchtokens"]) >= 0.995


def test_fallback_warns_once_and_attributes_delegate(setting):
    vit, x = setting["vit"], setting["photos"][:1]
    fast = FastBackbone(vit, "onnxruntime", "fp32", folder=setting["folder"], verbose=False)
    assert (fast.patch_size, fast.embed_dim, fast.n_storage_tokens, fast.n_blocks) == (16, 128, 4, 4)
    assert fast.blocks is vit.blocks and fast.torch_model is vit and fast.runtime_key == "onnxruntime-fp32"
    assert FastBackbone(vit, "torch") is vit
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        raw = fast.get_intermediate_layers(x, n=2, norm=False)
        fast.forward_features(x, masks=torch.zeros(1, 24, dtype=torch.bool))
        fast.get_intermediate_layers(x, n=1, norm=False)
    assert len(w) == 1 and "norm=False" in str(w[0].message)
    with torch.no_grad(): want = vit.get_intermediate_layers(x, n=2, norm=False)
    assert all(torch.equal(a, b) for a, b in zip(raw, want))                       # the torch model's own answer
    with pytest.raises(UserError, match="backend='auto'"): FastBackbone(vit, "torch", "int8")
    with pytest.raises(UserError, match="model.float"): FastBackbone(DinoVisionTransformer(ViTConfig.tiny()).bfloat16())
    from dinov3nb.eval.features import PixelFeatures
    with pytest.raises(UserError, match="backend='torch'"): FastBackbone(PixelFeatures())


def test_heatmap_backend_auto(setting, tmp_path, monkeypatch, capsys):
    import dinov3nb
    from dinov3nb.cli import main
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path / "cache"))
    weights = dinov3nb.save(setting["vit"], tmp_path / "small.safetensors")
    out = tmp_path / "heat.png"
    assert main(["heatmap", "skimage:chelsea", "--weights", str(weights), "--size", "64", "--backend", "auto",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"dinov3nb.accelerate: {choose(cpu_isa())}" in text and out.is_file() and out.stat().st_size > 1000
    assert main(["pca", "skimage:chelsea", "--weights", str(weights), "--precision", "int8", "--out", str(tmp_path / "p.png")]) == 2
    assert "--backend auto" in capsys.readouterr().err
    assert main(["kmeans", "skimage:chelsea", "--weights", str(weights), "--backend", "tensorrt", "--out", str(tmp_path / "k.png")]) == 2
    assert "kmeans --camera" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "k.png").exists()


def test_eval_knn_backend_auto(tmp_path, monkeypatch, capsys):
    from dinov3nb.eval.cli import eval_main
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path / "cache"))
    common = ["knn", "--model", "vit_tiny", "--n-train", "24", "--n-val", "8", "--n-test", "16", "--size", "32", "--ks", "3",
              "--quiet", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "features")]
    assert eval_main([*common, "--backend", "auto"]) == 0
    assert f"dinov3nb.accelerate: {choose(cpu_isa())}" in capsys.readouterr().out
    fast = set((tmp_path / "features").iterdir())
    assert eval_main(common) == 0                                                   # torch: its own cache entries
    slow = set((tmp_path / "features").iterdir()) - fast
    assert len(slow) == len(fast) == 3                                              # train, val, test each
    recs = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["args"]["backend"] for r in recs] == ["auto", "torch"] and all("top1@3" in r["metrics"] for r in recs)
    from safetensors.torch import load_file
    by_rows = lambda files: {len(t["features"]): t for t in map(load_file, files)}  # 24, 8, 16 images
    a, b = by_rows(fast), by_rows(slow)
    assert sorted(a) == sorted(b) == [8, 16, 24]
    for n in a:
        assert torch.equal(a[n]["labels"], b[n]["labels"])
        assert min_cos(a[n]["features"], b[n]["features"]) >= 0.995                # the CLS features agree
    assert eval_main(["knn", "--model", "pixels", "--backend", "auto", "--out", str(tmp_path / "o2")]) == 2
    assert "backend='torch'" in capsys.readouterr().err
