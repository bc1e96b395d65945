"""Parity of the ViT with the official implementation's outputs in ../shared/reference."""
import json

import pytest
import torch

from dinov3nb.models.backbones import build, compare_with_key_list, n_parameters
from dinov3nb.models.vit import DinoVisionTransformer
from dinov3nb.testing import check_multicrop_reference, check_vit_reference


@pytest.mark.parametrize("case", ["vit_mlp_reg4", "vit_swiglu", "vit_7b_like"])
def test_vit_case_matches_reference(reference_dir, case):
    diffs = check_vit_reference(case, reference_dir)  # raises on any output off by more than 1e-4
    assert len(diffs) == 30, sorted(diffs)  # every stored output was compared
    assert max(diffs.values()) <= 1e-4, diffs  # the same bound for every case and tensor, un-normalised ones too


def test_multicrop_training_forward_matches_reference(reference_dir):
    diffs = check_multicrop_reference(reference_dir)
    assert len(diffs) == 8 and max(diffs.values()) <= 1e-4, diffs


def test_strict_loading_rejects_a_missing_key(reference_dir):
    from safetensors.torch import load_file
    cfg = json.loads((reference_dir / "manifest.json").read_text())["cases"]["vit_mlp_reg4"]["constructor_kwargs"]
    state = {k[6:]: v for k, v in load_file(reference_dir / "vit_mlp_reg4.safetensors").items() if k.startswith("state.")}
    del state["blocks.1.attn.qkv.bias_mask"]
    with pytest.raises(RuntimeError, match="bias_mask"):
        DinoVisionTransformer(**cfg).load_state_dict(state, strict=True)


def test_every_official_layout(reference_dir):
    official = json.loads((reference_dir / "official_hub_keys.json").read_text())
    assert len(official) == 12
    for name, entry in official.items():
        model = build(name, device="meta")
        assert compare_with_key_list(model, entry["keys"]) == [], name
        assert n_parameters(model) == entry["n_params"], name


def test_untied_cls_norm_is_used_for_cls_and_registers():
    torch.manual_seed(0)
    from dinov3nb.models.vit import ViTConfig
    m = DinoVisionTransformer(ViTConfig.tiny(untie_cls_and_patch_norms=True)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(m.cls_norm.weight)
        x = torch.randn(1, 3, 32, 32)
        out = m.forward_features(x)
        tokens = out["x_prenorm"]
        torch.testing.assert_close(out["x_norm_clstoken"], m.cls_norm(tokens[:, 0]))
        torch.testing.assert_close(out["x_norm_patchtokens"], m.norm(tokens[:, 5:]))
