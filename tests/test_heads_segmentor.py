"""The ViT-Adapter + Mask2Former segmentor (`dinov3_vit7b16_ms`): parity with Meta's code, deformable attention against its
definition, the released key lists, any image size, any backbone, strict loading of the released files."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import dinov3nb
from dinov3nb.heads.deformable import MSDeformAttn, ms_deform_sample, reference_points
from dinov3nb.heads.loading import RELEASED_HEADS, head_module, official_key_diffs
from dinov3nb.heads.segmentor import (SegmentorConfig, build_segmentor, dinov3_vit7b16_ms, make_inference, segment,
                                      semantic_probs)
from dinov3nb.models.backbones import n_parameters
from dinov3nb.models.checkpoints import CheckpointMismatchError
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig
from dinov3nb.testing import check_heads_reference

SPEC = RELEASED_HEADS["dinov3_vit7b16_ms"]
SMALL = SegmentorConfig(hidden_dim=64, n_classes=7, conv_inplane=16, adapter_heads=4, pixel_heads=4, pixel_ffn=64,
                        pixel_layers=1, n_queries=6, decoder_heads=4, decoder_ffn=64, decoder_layers=2)


def test_every_stored_tensor_within_the_readme_bounds(reference_dir):
    diffs = check_heads_reference("segmentor_m2f", reference_dir / "heads")  # raises if one was not compared
    assert len(diffs) == 47
    assert {"in0.slide_tta.pred", "in0.slide_bf16einsum.pred", "in1.whole.pred", "in0.adapter.1", "in0.interaction.3.c",
            "in0.aux3.pred_masks", "in2.pred_masks"} <= set(diffs)
    assert max(diffs.values()) <= 1e-4


def deform_loop(value, shapes, loc, weights):
    "The definition: Σ_l Σ_k A · bilinear(x_l at (u·w - 1/2, v·h - 1/2)), neighbours outside the map count as zero."
    B, S, M, d = value.shape
    _, Q, _, L, P, _ = loc.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = torch.zeros(B, Q, M, d, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                for l, (h, w) in enumerate(shapes):
                    x = value[b, starts[l]:starts[l + 1], m].double().reshape(h, w, d)
                    for k in range(P):
                        px, py = loc[b, q, m, l, k, 0].item() * w - 0.5, loc[b, q, m, l, k, 1].item() * h - 0.5
                        x0, y0 = int(np.floor(px)), int(np.floor(py))
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                a = weights[b, q, m, l, k].item() * (1 - abs(px - xx)) * (1 - abs(py - yy))
                                out[b, q, m] += a * x[yy, xx]
    return out.reshape(B, Q, M * d)


@pytest.mark.parametrize("seed", [0, 1])
def test_deformable_sampling_equals_the_loop_definition(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 4), (3, 2), (1, 3)]
    B, Q, M, d, P = 2, 5, 3, 4, 3
    value = torch.randn(B, sum(h * w for h, w in shapes), M, d, generator=g)
    loc = torch.rand(B, Q, M, len(shapes), P, 2, generator=g) * 1.6 - 0.3  # points beyond the borders too
    weights = torch.rand(B, Q, M, len(shapes), P, generator=g).softmax(-1)
    ours = ms_deform_sample(value, shapes, loc, weights).double()
    assert (ours - deform_loop(value, shapes, loc, weights)).abs().max() < 1e-5


def test_deformable_module_equals_the_loop_definition():
    torch.manual_seed(0)
    shapes = [(4, 3), (2, 2)]
    attn = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=3, ratio=0.5).eval()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5); torch.nn.init.normal_(attn.attention_weights.weight)
    q, v = torch.randn(1, 5, 16), torch.randn(1, 16, 16)
    ref = torch.rand(1, 5, 2, 2)
    with torch.no_grad():
        off = attn.sampling_offsets(q).view(1, 5, 2, 2, 3, 2)
        loc = ref[:, :, None, :, None] + off / torch.tensor([[3., 4.], [2., 2.]])[None, None, None, :, None]
        w = attn.attention_weights(q).view(1, 5, 2, 6).softmax(-1).view(1, 5, 2, 2, 3)
        expect = attn.output_proj(deform_loop(attn.value_proj(v).view(1, 16, 2, 4), shapes, loc, w).float())
        assert (attn(q, ref, v, shapes) - expect).abs().max() < 1e-5


def test_reference_points_are_cell_centres():
    r = reference_points([(2, 4)])
    assert r.shape == (1, 8, 1, 2)
    assert torch.allclose(r[0, 5, 0], torch.tensor([3 / 8, 3 / 4]))


def test_constructor_is_public_and_matches_the_official_keys_on_meta(reference_dir):
    assert dinov3nb.dinov3_vit7b16_ms is dinov3_vit7b16_ms
    entry = json.loads((reference_dir / "heads" / "official_head_keys.json").read_text())["dinov3_vit7b16_ms"]
    model = dinov3_vit7b16_ms(device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert official_key_diffs(model, SPEC, entry) == []
    head = head_module(model, SPEC)
    assert n_parameters(model) == entry["n_params_total"]
    assert n_parameters(head) == entry["n_params_without_backbone"]
    assert sum(t.numel() for t in head.state_dict().values()) == entry["head_checkpoint"]["n_elements"]
    assert {k for k, v in head.state_dict().items() if v.dtype == torch.int64} == set(entry["head_checkpoint"]["non_fp32_dtypes"])


def small_model(**kw):
    return build_segmentor(DinoVisionTransformer(ViTConfig.tiny(depth=4, **kw)), SMALL)


@pytest.mark.parametrize("hw", [(50, 70), (33, 64), (64, 31)])
def test_sides_not_multiple_of_32_are_padded_and_cropped_back(hw):
    torch.manual_seed(0)
    model = small_model()
    x = torch.randn(1, 3, *hw)
    H, W = hw
    Hp, Wp = -(-H // 32) * 32, -(-W // 32) * 32
    with torch.no_grad():
        masks = model.predict(x)["pred_masks"]
        assert masks.shape == (1, 6, H, W)
        padded = F.interpolate(model(F.pad(x, (0, Wp - W, 0, Hp - H)))["pred_masks"], size=(Hp, Wp), mode="bilinear")
        assert (masks - padded[..., :H, :W]).abs().max() < 1e-5
        assert model(x)["pred_masks"].shape == (1, 6, -(-H // 4), -(-W // 4))
    p = make_inference(model, x, "slide", crop=(32, 32), stride=(20, 20))
    assert p.shape == (1, 7, H, W) and torch.allclose(p.sum(1), torch.ones(1, H, W), atol=1e-5)
    assert make_inference(model, x, "whole", size=None).shape == (1, 7, H, W)


def test_segment_api_gives_a_class_map_at_the_image_size():
    torch.manual_seed(0)
    model = small_model()
    img = (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)
    seg = segment(model, img, size=None, crop=32, stride=24, flip=True, names=[f"c{i}" for i in range(7)])
    assert seg.class_map.shape == (45, 70) and seg.class_map.dtype == np.int64
    assert abs(sum(c.fraction for c in seg.classes) - 1) < 1e-9 and seg.classes[0].name.startswith("c")
    with pytest.raises(ValueError, match="3 class names for 7 classes"):
        segment(model, img, size=None, crop=32, stride=24, names=["a", "b", "c"])


def test_any_backbone_width_and_half_precision_option():
    torch.manual_seed(0)
    vit = DinoVisionTransformer(ViTConfig.tiny(depth=4, embed_dim=96, num_heads=4))  # neither 64 nor 4096 wide
    model = build_segmentor(vit, SMALL)
    assert model.segmentation_model[0].spm.fc1.weight.shape == (96, 16, 1, 1)
    assert model.segmentation_model[1].pixel_decoder.input_convs[0][0].weight.shape == (64, 96, 1, 1)
    x = torch.randn(1, 3, 64, 64)
    p32 = semantic_probs(model, x, "whole", size=None)
    model.autocast_dtype = torch.bfloat16  # explicit option: autocast (the pixel decoder stays fp32)
    p16 = semantic_probs(model, x, "whole", size=None)
    assert p16.dtype == torch.float32 and (p16 - p32).abs().max() < 0.05


def tiny_case(reference_dir):
    entry = json.loads((reference_dir / "heads" / "manifest.json").read_text())["cases"]["segmentor"]
    t = load_file(reference_dir / "heads" / entry["file"])
    sd = {k[len("state."):]: v for k, v in t.items() if k.startswith("state.")}
    head = {k: v for k, v in sd.items() if not k.startswith(SPEC.backbone_prefix)}
    backbone = {k[len(SPEC.backbone_prefix):]: v for k, v in sd.items() if k.startswith(SPEC.backbone_prefix)}
    return entry, t, sd, head, backbone


def build_tiny(entry, **kw):
    return dinov3_vit7b16_ms(backbone=DinoVisionTransformer(**entry["backbone_kwargs"]), cfg=SegmentorConfig.from_official(entry), **kw)


def test_released_files_load_and_wrong_files_are_errors_naming_the_keys(reference_dir, tmp_path):
    entry, t, sd, head, backbone = tiny_case(reference_dir)
    torch.save(head, tmp_path / "head.pth"); torch.save(backbone, tmp_path / "backbone.pth"); torch.save(sd, tmp_path / "all.pth")
    for kw in (dict(weights=tmp_path / "head.pth", backbone_weights=tmp_path / "backbone.pth"), dict(weights=tmp_path / "all.pth")):
        with torch.no_grad(): out = build_tiny(entry, **kw)(t["in2.image"])["pred_logits"]
        assert (out - t["in2.pred_logits"]).abs().max() < 1e-4
    dropped = sorted(head)[0]
    torch.save({k: v for k, v in head.items() if k != dropped} | {"surplus.weight": torch.ones(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match=rf"missing keys: {dropped}.*unexpected keys: surplus.weight"):
        build_tiny(entry, weights=tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="backbone_weights="):  # the backbone given as the head
        build_tiny(entry, weights=tmp_path / "backbone.pth")
    key = "segmentation_model.1.predictor.class_embed.weight"
    torch.save(head | {key: torch.zeros(3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: .*class_embed.weight \(file \[3, 3\], model \[6, 64\]\)"):
        build_tiny(entry, weights=tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="do not also pass backbone_weights"):
        build_tiny(entry, weights=tmp_path / "all.pth", backbone_weights=tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="meta"):
        dinov3_vit7b16_ms(tmp_path / "head.pth", device="meta")


def test_segment_command_writes_overlay_class_png_and_json(tmp_path, capsys):
    from PIL import Image
    from dinov3nb.cli import main
    img = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)).save(img)
    args = ["segment", str(img), "--random", "--size", "64", "--crop", "64", "--stride", "48", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    out = tmp_path / "o"
    assert sorted(p.name for p in out.iterdir()) == ["photo_classes.png", "photo_segment.json", "photo_segment.png"]
    cmap = np.asarray(Image.open(out / "photo_classes.png"))
    assert cmap.shape == (70, 90) and cmap.max() < 150
    info = json.loads((out / "photo_segment.json").read_text())
    assert info["height"] == 70 and abs(sum(c["fraction"] for c in info["classes"]) - 1) < 1e-4
    assert "RANDOM" in info["model"]
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # never overwrites silently


@pytest.mark.parametrize("argv, message", [
    (["missing.jpg", "--random"], "cannot read image"),
    (["skimage:coffee"], "--backbone-weights"),
    (["skimage:coffee", "--weights", "nope.pth", "--backbone-weights", "nope.pth"], "--weights nope.pth: no such file"),
    (["skimage:coffee", "--random", "--weights", "x.pth"], "do not also pass"),
    (["skimage:coffee", "--random", "--size", "8"], "too small"),
])
def test_segment_command_bad_input_is_named(tmp_path, capsys, argv, message):
    from dinov3nb.heads.segment_cli import segment_main
    with pytest.raises(SystemExit) if "--size" in argv else _nothing():
        code = segment_main(argv + ["--out", str(tmp_path / "o")])
        assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


class _nothing:
    def __enter__(self): return self
    def __exit__(self, *a): return False


def test_segment_command_head_file_that_does_not_fit_is_named(reference_dir, tmp_path, capsys):
    from dinov3nb.heads.segment_cli import segment_main
    torch.save({"surplus.weight": torch.ones(1)}, tmp_path / "head.pth")
    torch.save({"cls_token": torch.ones(1)}, tmp_path / "backbone.pth")
    import dinov3nb.heads.segment_cli as cli
    cli_model = cli.dinov3_vit7b16_ms
    cli.dinov3_vit7b16_ms = lambda w, b, **kw: cli_model(w, b, backbone=DinoVisionTransformer(ViTConfig.tiny(depth=4)), cfg=SMALL)
    try: code = segment_main(["skimage:coffee", "--weights", str(tmp_path / "head.pth"), "--backbone-weights",
                              str(tmp_path / "backbone.pth"), "--out", str(tmp_path / "o")])
    finally: cli.dinov3_vit7b16_ms = cli_model
    err = capsys.readouterr().err
    assert code == 2 and "unexpected keys: surplus.weight" in err and "missing keys" in err, err


def fake_ade20k(root, n=2, size=(40, 56), seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True); (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(root / "images" / split / f"ADE_{i}.jpg")
            ann = np.kron(rng.integers(0, 4, (size[0] // 8, size[1] // 8)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
            Image.fromarray(ann).save(root / "annotations" / split / f"ADE_{i}.png")
    return root


def test_eval_seg_m2f_on_an_ade20k_folder(tmp_path, capsys):
    from dinov3nb.eval.cli import eval_main
    data = fake_ade20k(tmp_path / "ADEChallengeData2016")
    args = ["seg", "--head", "m2f", "--model", "vit_tiny", "--data", str(data), "--size", "48", "--quiet", "--out", str(tmp_path / "r")]
    assert eval_main(args) == 0
    rec = json.loads((tmp_path / "r" / "results.json").read_text())[-1]
    assert rec["protocol"] == "seg" and 0 <= rec["metrics"]["mIoU"] <= 1 and 0 <= rec["metrics"]["pixel_acc"] <= 1
    torch.save({"surplus.weight": torch.ones(1)}, tmp_path / "head.pth")
    capsys.readouterr()
    assert eval_main(args + ["--head-weights", str(tmp_path / "head.pth")]) == 2
    err = capsys.readouterr().err
    assert "unexpected keys: surplus.weight" in err and "missing keys: segmentation_model" in err, err
    assert eval_main(["seg", "--head", "m2f", "--model", "pixels", "--data", str(data), "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert "not one" in capsys.readouterr().err
