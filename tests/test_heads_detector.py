"""The Plain-DETR COCO detector (`dinov3_vit7b16_de`): parity with the official code, the released key lists on `meta`,
the released files loading strictly, and `detect` giving the same boxes in a batch as one image at a time."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import dinov3nb
from dinov3nb.errors import UserError
from dinov3nb.heads.detect import coco_classes, detect
from dinov3nb.heads.detector import (DetectorConfig, build_detector, dinov3_vit7b16_de, pad_batch, postprocess,
                                     window_sides)
from dinov3nb.heads.loading import RELEASED_HEADS, official_key_diffs
from dinov3nb.models.backbones import build, n_parameters
from dinov3nb.models.checkpoints import CheckpointMismatchError
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig
from dinov3nb.testing import check_heads_reference

SPEC = RELEASED_HEADS["dinov3_vit7b16_de"]


def test_parity_with_the_official_detector(reference_dir):
    diffs = check_heads_reference("detector_plaindetr", reference_dir / "heads")  # raises beyond the README's bounds
    assert len(diffs) == 48  # every stored tensor of both batches compared
    assert diffs["in1.post.labels"] == 0 and diffs["in1.transformer.max_shape_hw"] == 0
    assert max(v for k, v in diffs.items() if "box" not in k and "refer" not in k and "proposals" not in k) <= 1e-4


def test_official_head_keys_match_exactly_on_meta(reference_dir):
    entry = json.loads((reference_dir / "heads" / "official_head_keys.json").read_text())["dinov3_vit7b16_de"]
    model = dinov3_vit7b16_de(device="meta")
    assert dinov3nb.dinov3_vit7b16_de is dinov3_vit7b16_de
    assert all(p.is_meta for p in model.parameters())
    assert official_key_diffs(model, SPEC, entry) == []
    head = {k: v for k, v in model.detector.state_dict().items() if not k.startswith(SPEC.backbone_in_head)}
    assert len(head) == entry["head_checkpoint"]["n_keys"] == 378
    assert sum(v.numel() for v in head.values()) == entry["head_checkpoint"]["n_elements"]  # aliases counted twice
    assert n_parameters(model) == entry["n_params_total"]
    assert n_parameters(model.detector) - n_parameters(model.detector.backbone) == entry["n_params_without_backbone"]


def tiny_case(reference_dir):
    entry = json.loads((reference_dir / "heads" / "manifest.json").read_text())["cases"]["detector"]
    t = load_file(reference_dir / "heads" / entry["file"])
    sd = {k[len("state."):]: v for k, v in t.items() if k.startswith("state.")}
    cfg = DetectorConfig.from_official(entry["detection_head_config"])
    cfg.num_queries_one2one = entry["inference_num_queries"]
    return entry, t, sd, cfg


def build_tiny(entry, cfg, *args, **kw):
    return dinov3_vit7b16_de(*args, backbone=DinoVisionTransformer(**entry["backbone_kwargs"]), cfg=cfg, **kw)


def split(sd):
    "(head file as released: `{'model': ...}` without the backbone, with both alias names; backbone file)."
    bb = SPEC.backbone_prefix
    head = {k[len(SPEC.head_prefix):]: v for k, v in sd.items() if not k.startswith(bb)}
    return {"model": head}, {k[len(bb):]: v for k, v in sd.items() if k.startswith(bb)}


def check_outputs(model, t):
    post = model([t["in1.image0"], t["in1.image1"]])
    for j, p in enumerate(post):
        ref = t["in1.post.boxes_xyxy"][j]
        assert torch.equal(p["labels"], t["in1.post.labels"][j])
        assert ((p["boxes"] - ref).abs() <= 1e-4 + 1e-5 * ref.abs()).all()


def test_released_head_file_and_backbone_file_load(reference_dir, tmp_path):
    entry, t, sd, cfg = tiny_case(reference_dir)
    head, backbone = split(sd)
    assert "class_embed.0.weight" in head["model"] and "transformer.decoder.class_embed.0.weight" in head["model"]
    assert head["model"]["query_embed.weight"].shape[0] == 36  # one-to-one + one-to-many rows, 12 used
    torch.save(head, tmp_path / "dinov3_vit7b16_coco2017_detr_head-0123abcd.pth")
    torch.save(backbone, tmp_path / "backbone.pth")
    check_outputs(build_tiny(entry, cfg, tmp_path / "dinov3_vit7b16_coco2017_detr_head-0123abcd.pth",
                             tmp_path / "backbone.pth"), t)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_one_combined_state_dict_loads(reference_dir, tmp_path, fmt):
    entry, t, sd, cfg = tiny_case(reference_dir)
    path = tmp_path / f"combined.{fmt}"
    if fmt == "safetensors": save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else: torch.save(sd, path)
    check_outputs(build_tiny(entry, cfg, path), t)


def test_wrong_files_are_errors_naming_the_keys(reference_dir, tmp_path):
    entry, _, sd, cfg = tiny_case(reference_dir)
    head, backbone = split(sd)
    h = dict(head["model"]); h.pop("transformer.level_embed"); h["surplus.weight"] = torch.ones(1)
    torch.save({"model": h}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: transformer.level_embed.*unexpected keys: surplus.weight"):
        build_tiny(entry, cfg, tmp_path / "bad.pth")
    h = dict(head["model"]); h.pop("class_embed.1.bias")  # one of two alias names missing: still an error
    torch.save({"model": h}, tmp_path / "alias.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: class_embed.1.bias"):
        build_tiny(entry, cfg, tmp_path / "alias.pth")
    torch.save(backbone, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointMismatchError, match="backbone_weights="):
        build_tiny(entry, cfg, tmp_path / "backbone.pth")
    h = dict(head["model"]); h["query_embed.weight"] = torch.zeros(12, 64)  # a file with only the inference rows
    torch.save({"model": h}, tmp_path / "rows.pth")
    with pytest.raises(CheckpointMismatchError, match=r"query_embed.weight \(file \[12, 64\], model \[36, 64\]\)"):
        build_tiny(entry, cfg, tmp_path / "rows.pth")


def tiny_model():
    torch.manual_seed(0)
    return build_detector(DinoVisionTransformer(ViTConfig.tiny()).eval(), DetectorConfig.tiny())


def test_padded_batches_of_different_sizes_give_the_boxes_of_one_image_at_a_time():
    model, rng = tiny_model(), np.random.default_rng(0)
    images = [rng.integers(0, 255, size=s, dtype=np.uint8) for s in ((100, 70, 3), (150, 130, 3), (96, 96, 3), (90, 60, 3))]
    batch = detect(model, images, batch_size=3)
    for img, got in zip(images, batch):
        one = detect(model, img)
        assert np.array_equal(got.labels, one.labels)
        assert np.abs(got.boxes - one.boxes).max() <= 1e-4 + 1e-5 * np.abs(one.boxes).max()
        assert np.abs(got.scores - one.scores).max() <= 1e-5
        h, w = img.shape[:2]
        assert (got.boxes >= 0).all() and (got.boxes[:, 0::2] <= w).all() and (got.boxes[:, 1::2] <= h).all()
        assert got.names == [coco_classes()[l] for l in got.labels]


def test_threshold_and_nms_are_off_by_default_and_only_remove():
    model, img = tiny_model(), np.random.default_rng(1).integers(0, 255, size=(96, 144, 3), dtype=np.uint8)
    full = detect(model, img)
    assert len(full) == DetectorConfig.tiny().topk and (np.diff(full.scores) <= 0).all()
    thr = float(np.median(full.scores))
    kept = detect(model, img, score_threshold=thr, nms_iou=0.3)
    assert 0 < len(kept) < len(full) and (kept.scores >= thr).all()
    coco = kept.to_coco(5)
    assert coco[0]["image_id"] == 5 and coco[0]["category_id"] == int(kept.labels[0])
    x0, y0, x1, y1 = kept.boxes[0]
    assert np.allclose(coco[0]["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=0.01)  # COCO results: [x, y, w, h]


def test_any_backbone_and_clear_errors():
    vits = dinov3_vit7b16_de(backbone=build("dinov3_vits16", device="meta"), device="meta")
    assert vits.detector.input_proj[0][0].in_channels == 2 * 4 * 384  # [global, windows] x 4 layers x D
    assert vits.detector.cfg.layers_to_use == [2, 5, 8, 11]
    assert window_sides(128, 3, 16) == [48, 48, 32]
    with pytest.raises(UserError, match="multiple of 48"):
        window_sides(64, 3, 16)
    with pytest.raises(ValueError, match="two_stage"):
        DetectorConfig.from_official({"two_stage": False})


def test_postprocess_clamps_to_each_image_and_labels_are_class_ids():
    logits = torch.full((2, 3, 91), -10.0); logits[0, 1, 18] = 5.0; logits[1, 2, 1] = 4.0
    boxes = torch.tensor([[50., 50., 200., 20.]]).expand(2, 3, 4)
    out = postprocess(logits, boxes, [(40, 60), (100, 120)], topk=2)
    assert out[0]["labels"][0] == 18 and out[1]["labels"][0] == 1
    assert out[0]["boxes"][0].tolist() == [0.0, 40.0, 60.0, 40.0] and out[1]["boxes"][0].tolist() == [0.0, 40.0, 120.0, 60.0]
    x, mask = pad_batch([torch.ones(3, 20, 30), torch.ones(3, 40, 10)], multiple=48)
    assert x.shape == (2, 3, 48, 48) and mask[0, :20, :30].logical_not().all() and mask[0, 20:].all()
