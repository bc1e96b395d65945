"""The CPU fast path (`dinov3nb.deploy.fast`): the ISA decides the precision, and every precision keeps accuracy."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
from dinov3nb.deploy.fast import accelerate, choose, cpu_isa, has_openvino  # noqa: E402
from dinov3nb.errors import UserError  # noqa: E402
from dinov3nb.testing import blocks_matter  # noqa: E402
from dinov3nb.models.transforms import preprocess  # noqa: E402
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig  # noqa: E402
from dinov3nb.shapesworld import ShapesWorld  # noqa: E402

AMX = "model name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16\n"
AVX2 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n"


def test_the_isa_decides_the_precision():
    amx, avx2 = cpu_isa(AMX), cpu_isa(AVX2)
    assert amx.amx and amx.bf16 and amx.vnni and not avx2.bf16 and avx2.flags == ["avx2"]
    assert (choose(amx, openvino=True).backend, choose(amx, openvino=True).precision) == ("openvino", "bf16")
    assert (choose(avx2, openvino=True).backend, choose(avx2, openvino=True).precision) == ("openvino", "int8")
    zen4 = cpu_isa("model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n")
    assert zen4.bf16 and not zen4.amx and choose(zen4, openvino=True).precision == "int8"  # VNNI int8 beats vdpbf16ps
    assert choose(zen4, "bf16", openvino=True).precision == "bf16"
    for isa in (amx, avx2):  # without OpenVINO: the exact fp32 ONNX Runtime path, and the reason says how to get more
        c = choose(isa, openvino=False)
        assert (c.backend, c.precision) == ("onnxruntime", "fp32") and "dinov3nb[openvino]" in c.reason
    with pytest.raises(UserError, match="AMX or AVX512-BF16"): choose(avx2, "bf16", openvino=True)
    with pytest.raises(UserError, match="choose one of"): choose(amx, "fp16")
    with pytest.raises(ImportError, match=r"dinov3nb\[openvino\]"): choose(amx, backend="openvino", openvino=False)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    "A small model whose blocks matter, photos, and a linear foreground head trained on its fp32 torch features."
    import skimage.data
    torch.manual_seed(0)
    vit = blocks_matter(DinoVisionTransformer(ViTConfig.tiny(embed_dim=128, depth=4, num_heads=2)))
    gray = lambda im: np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
    photos = torch.cat([preprocess(gray(getattr(skimage.data, n)()), size=(224, 224)) for n in ("cat", "brick", "logo")])

    def patches(n, split):
        ds = ShapesWorld(n, size=64, split=split)
        s = [ds.sample(i) for i in range(n)]
        fg = torch.from_numpy(np.stack([x.mask > 0 for x in s])).float()[:, None]
        return torch.cat([preprocess(x.image, size=(64, 64)) for x in s]), (F.avg_pool2d(fg, 16) > 0.5).flatten()
    train, test = patches(300, "train"), patches(300, "val")
    with torch.no_grad():
        ref = vit.forward_features(photos)["x_norm_patchtokens"]
        no_blocks = nn.Sequential(); blocks, vit.blocks = vit.blocks, no_blocks
        skip = vit.forward_features(photos)["x_norm_patchtokens"]; vit.blocks = blocks
        X = torch.cat([vit.forward_features(train[0])["x_norm_patchtokens"].flatten(0, 1), torch.ones(len(train[1]), 1)], 1).double()
    assert F.cosine_similarity(ref, skip, dim=-1).mean() < 0.5  # the blocks matter: their rounding errors reach the output
    fg = train[1]
    w = torch.where(fg, 0.5 / fg.float().mean(), 0.5 / (1 - fg.float().mean())).double()[:, None]
    head = torch.linalg.solve(X.T @ (w * X) + 10 * torch.eye(X.shape[1]), X.T @ (w * (fg.double()[:, None] * 2 - 1)))[:, 0]

    def miou(fn):
        f = fn(test[0])["x_norm_patchtokens"].flatten(0, 1)
        pred = torch.cat([f, torch.ones(len(f), 1)], 1).double() @ head > 0
        return 100 * sum(((pred == c) & (test[1] == c)).sum() / ((pred == c) | (test[1] == c)).sum() for c in (False, True)).item() / 2
    with torch.no_grad(): base = miou(vit.forward_features)
    return dict(vit=vit, photos=photos, ref=ref, miou=miou, base=base, folder=tmp_path_factory.mktemp("fast"))


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "int8"])
def test_every_precision_keeps_accuracy(setting, precision, monkeypatch, capsys):
    isa = cpu_isa()
    if precision == "bf16" and not isa.bf16: pytest.skip(f"bf16 needs AMX or AVX512-BF16; this CPU ({isa}) has neither")
    if precision in ("bf16", "int8") and not has_openvino():
        pytest.skip("OpenVINO is not installed (pip install 'dinov3nb[openvino]'): bf16/int8 are not what auto picks here")
    monkeypatch.setenv("DINOV3NB_CACHE", str(setting["folder"]))
    rt = accelerate(setting["vit"], precision, folder=setting["folder"])
    assert f"dinov3nb.accelerate: {rt.choice}" in capsys.readouterr().out  # one line: what and why
    cos = F.cosine_similarity(rt(setting["photos"])["x_norm_patchtokens"], setting["ref"], dim=-1)
    assert cos.min() >= 0.995, (rt.choice, cos.min())
    assert abs(setting["miou"](rt) - setting["base"]) <= 1.0, (rt.choice, setting["base"])
    out = rt(torch.randn(2, 3, 32, 48))  # the same dict as the torch model, any size
    assert out["x_norm_patchtokens"].shape == (2, 6, 128) and out["x_storage_tokens"].shape == (2, 4, 128)
    assert (rt.stride, rt.normalization) == (16, "lvd")


def test_cached_and_missing_openvino_names_the_extra(setting, monkeypatch, capsys):
    monkeypatch.setenv("DINOV3NB_CACHE", str(setting["folder"]))
    first = accelerate(setting["vit"], "fp32", folder=setting["folder"])
    n = len(list(setting["folder"].glob("*.onnx")))
    assert accelerate(setting["vit"], "fp32", folder=setting["folder"], verbose=False).path == first.path
    assert len(list(setting["folder"].glob("*.onnx"))) == n
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    assert not has_openvino()
    with pytest.raises(ImportError, match=r"dinov3nb\[openvino\]"): accelerate(setting["vit"], backend="openvino")
    rt = accelerate(setting["vit"], folder=setting["folder"])
    assert (rt.choice.backend, rt.choice.precision) == ("onnxruntime", "fp32")
    assert "OpenVINO is not installed" in capsys.readouterr().out


def test_kmeans_video_with_backend_auto(tmp_path, monkeypatch, synthetic_video, capsys):
    from dinov3nb.cli import main
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DINOV3NB_WEIGHTS", raising=False)
    out = tmp_path / "seg.avi"
    assert main(["kmeans", "--video", str(synthetic_video), "-k", "3", "--size", "32", "--frames", "2", "--backend", "auto",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"dinov3nb.accelerate: {choose(cpu_isa())}" in text and "2 frames" in text and out.is_file()
