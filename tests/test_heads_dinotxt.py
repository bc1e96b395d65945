"""dino.txt (`dinov3_vitl16_dinotxt_tet1280d20h24l`): parity with Meta's code on every stored tensor, the official key
lists, strict loading of the released files, the optional tokeniser, zero-shot classification and segmentation."""
import json
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import torch

import dinov3nb
from dinov3nb.heads import dinotxt as dt
from dinov3nb.heads.dinotxt import (CLIP_BPE_SHA256, DINOTXT, DinoTxt, DinoTxtConfig, TextTransformer,
                                    dinotxt_key_diffs, dinov3_vitl16_dinotxt_tet1280d20h24l, head_view, load_dinotxt)
from dinov3nb.models.backbones import n_parameters
from dinov3nb.models.checkpoints import CheckpointMismatchError
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig
from dinov3nb.testing import check_heads_reference

needs_text = pytest.mark.skipif(
    find_spec("open_clip") is None, reason="dino.txt's tokeniser needs the `text` extra (open-clip-torch): pip install 'dinov3nb[text]'")
TINY = DinoTxtConfig(embed_dim=128, vision_model_use_patch_tokens=True, vision_model_num_head_blocks=2,
                     text_model_tokens_pooler_type="argmax", text_model_use_linear_projection=True)


def tiny_model() -> DinoTxt:
    return DinoTxt(TINY, DinoVisionTransformer(ViTConfig.tiny()).eval(), TextTransformer(dim=32, num_heads=2, num_layers=2)).eval()


@needs_text
def test_every_stored_tensor_within_bounds(reference_dir):
    diffs = check_heads_reference("dinotxt", reference_dir / "heads")  # raises if a stored tensor was not compared
    groups = {"text.token_ids", "zeroshot.token_ids", "text.features", "in0.image_features", "in0.head.patch_tokens",
              "in0.backbone.patch_tokens", "in0.get_logits.image_logits", "in0.zeroshot.logits", "zeroshot.classifier",
              "openvocab.text_features", "in1.openvocab.cos", "in1.openvocab.upsampled", "in1.openvocab.segmentation"}
    assert len(diffs) == 22 and groups <= set(diffs)
    assert diffs["text.token_ids"] == diffs["zeroshot.token_ids"] == diffs["in1.openvocab.segmentation"] == 0
    print({k: f"{v:.1e}" for k, v in diffs.items()})


@needs_text
def test_tokeniser_vocabulary_is_the_recorded_one(reference_dir):
    case = json.loads((reference_dir / "heads" / "manifest.json").read_text())["cases"]["dinotxt"]
    assert case["vocab"]["sha256"] == CLIP_BPE_SHA256
    ids = dt.tokenize(["a photo of a dog.", "", "x " * 200])
    assert ids.dtype == torch.int64 and ids.shape == (3, 77)
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 1929, 269, 49407] and ids[1, :3].tolist() == [49406, 49407, 0]
    assert ids[2, -1] == 49407  # truncated: the last kept token becomes end-of-text
    with pytest.raises(TypeError, match="string"): dt.tokenize([1, 2])


def test_missing_text_extra_is_a_clear_error(monkeypatch):
    dt.clip_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "open_clip", None)
    monkeypatch.setitem(sys.modules, "open_clip.tokenizer", None)
    try:
        with pytest.raises(ImportError, match=r"dinov3nb\[text\]"): dt.tokenize("a dog")
        with pytest.raises(ImportError, match="text"): tiny_model().encode_text(["a dog"])
    finally: dt.clip_tokenizer.cache_clear()


def test_released_model_on_meta_has_the_official_keys(reference_dir):
    model = dinov3_vitl16_dinotxt_tet1280d20h24l(device="meta")
    assert all(p.is_meta for p in model.parameters())
    entry = json.loads((reference_dir / "heads" / "official_head_keys.json").read_text())[DINOTXT.name]
    assert dinotxt_key_diffs(model, entry) == []
    assert (n_parameters(model), n_parameters(head_view(model))) == (entry["n_params_total"], entry["n_params_without_backbone"])
    assert hasattr(dinov3nb, DINOTXT.name)


def test_released_files_load_strictly(tmp_path):
    model = tiny_model()
    torch.save(head_view(model).state_dict(), tmp_path / "head-a442d8f5.pth")  # the released layout: full names, .pth
    torch.save({"model": model.state_dict()}, tmp_path / "combined.pth")
    torch.save(model.visual_model.backbone.state_dict(), tmp_path / "backbone.pth")
    x, ids = torch.randn(1, 3, 32, 32), torch.randint(1, 49407, (2, 77))
    with torch.no_grad():
        for m in (load_dinotxt(tiny_model(), tmp_path / "head-a442d8f5.pth", tmp_path / "backbone.pth"),
                  load_dinotxt(tiny_model(), tmp_path / "combined.pth")):
            assert torch.equal(m.encode_image(x), model.encode_image(x)) and torch.equal(m.encode_text(ids), model.encode_text(ids))
        with pytest.raises(CheckpointMismatchError, match="backbone_weights"):  # a backbone file passed as the head file
            load_dinotxt(tiny_model(), tmp_path / "backbone.pth")
        sd = head_view(model).state_dict(); del sd["text_model.head.linear_projection.weight"]
        torch.save(sd, tmp_path / "partial.pth")
        with pytest.raises(CheckpointMismatchError, match="text_model.head.linear_projection.weight"):
            load_dinotxt(tiny_model(), tmp_path / "partial.pth")
        with pytest.raises(ValueError, match="combined"):
            load_dinotxt(tiny_model(), tmp_path / "combined.pth", tmp_path / "backbone.pth")


@needs_text
def test_zeroshot_classification_and_segmentation_of_a_photo():
    from skimage import data
    from dinov3nb.heads.dinotxt_zeroshot import classify_zeroshot, segment_openvocab
    torch.manual_seed(0)
    model, photo = tiny_model(), data.astronaut()[::4, ::4]  # 128x128
    preds = classify_zeroshot(model, [photo, photo], ["astronaut", "flag", "cat"], templates=["a photo of a {}."], k=2, size=64)
    assert [len(p) for p in preds] == [2, 2] and preds[0][0].name in ("astronaut", "flag", "cat")
    for mode in ("whole", "slide"):
        res = segment_openvocab(model, photo[:, :96], ["person", "sky"], mode=mode, size=64, side=48, stride=32,
                                templates=["a photo of the {}."])
        assert res.segmentation.shape == (128, 96) and res.scores.shape == (2, 128, 96)
        assert np.array_equal(res.segmentation, res.scores.argmax(0))
    pytest.importorskip("matplotlib", reason="the overlay needs the `viz` extra")
    from dinov3nb.heads.dinotxt_zeroshot import overlay_segmentation
    import matplotlib; matplotlib.use("Agg")
    fig = overlay_segmentation(photo[:, :96], res, title="random weights")
    assert fig.axes and fig.axes[0].get_legend() is not None
