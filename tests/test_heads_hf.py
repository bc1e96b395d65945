"""Hugging Face `transformers` CHMv2 checkpoints: load with equal outputs, save back, clear errors."""
import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install 'dinov3nb[dev]'")
from transformers import CHMv2Config, CHMv2ForDepthEstimation

from dinov3nb.heads.chmv2_hf import hf_chmv2_configs, load_hf_chmv2, save_hf_chmv2
from dinov3nb.heads.depth import CHMV2_CONFIG, DD_7B_CONFIG, build_depther
from dinov3nb.models.checkpoints import save_hf
from dinov3nb.models.convert import CheckpointFormatError
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig


def tiny_hf(seed=0, key_bias=False, out_indices=(1, 2, 3, 4), n_layers=4, **head):
    torch.manual_seed(seed)
    bb = dict(model_type="dinov3_vit", hidden_size=32, intermediate_size=128, num_attention_heads=2, num_hidden_layers=n_layers,
              num_register_tokens=4, out_indices=list(out_indices), reshape_hidden_states=True, apply_layernorm=True,
              layer_norm_eps=1e-5, return_class_token=True, key_bias=key_bias)
    cfg = CHMv2Config(backbone_config=bb, **{**dict(post_process_channels=[8, 16, 24, 32], fusion_hidden_size=16,
                                                    head_hidden_size=8, number_output_channels=32), **head})
    model = CHMv2ForDepthEstimation(cfg).eval()
    with torch.no_grad():  # random (non-zero) biases everywhere, also the key bias when there is one
        for n, p in model.named_parameters():
            if n.endswith("bias"): p.normal_(std=3.0 if "k_proj" in n else 0.1)  # a key bias moves features by ~1e-2
    return model


@pytest.mark.parametrize("kw", [dict(), dict(key_bias=True, readout_type="add", out_indices=(1, 3, 4, 6), n_layers=6),
                                dict(readout_type="ignore", bins_strategy="linear", norm_strategy="linear", max_depth=10.0)],
                         ids=["default", "key_bias-add", "ignore-linear"])
def test_transformers_checkpoint_loads_with_equal_outputs(tmp_path, kw):
    hf = tiny_hf(**kw)
    hf.save_pretrained(tmp_path)
    ours = load_hf_chmv2(tmp_path)
    for shape in [(2, 3, 64, 80), (1, 3, 48, 80)]:  # even and odd (3x5) patch grids
        x = torch.randn(shape)
        with torch.no_grad(): ref, got = hf(pixel_values=x).predicted_depth, ours(x)[:, 0]
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-4 + 1e-5 * ref.abs().max(), (got - ref).abs().max()
        with torch.no_grad(): hf_layers, our_layers = hf.backbone(x), ours.encoder(ours.encoder.pad(x))
        for fmap, cls, (patch, our_cls) in zip(hf_layers.feature_maps, hf_layers.cls_tokens, our_layers):
            assert (fmap - patch).abs().max() <= 1e-4 and (cls - our_cls).abs().max() <= 1e-4


def test_round_trip_through_transformers(tmp_path):
    torch.manual_seed(1)
    cfg = dataclasses.replace(CHMV2_CONFIG, backbone_out_layers=(0, 2, 3, 4), channels=16, post_process_channels=(8, 8, 16, 16),
                              n_hidden_channels=8, n_output_channels=16)
    ours = build_depther(DinoVisionTransformer(ViTConfig.tiny(depth=5)), cfg)
    save_hf_chmv2(ours, tmp_path)
    hf = CHMv2ForDepthEstimation.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(): assert (hf(pixel_values=x).predicted_depth - ours(x)[:, 0]).abs().max() <= 1e-4
    back = load_hf_chmv2(tmp_path)
    assert back.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


def test_released_config_is_the_official_chmv2():
    vit, head = hf_chmv2_configs(CHMv2Config().to_dict(), {})  # transformers' defaults = the released model
    ours = dataclasses.asdict(head) | {"backbone_out_layers": tuple(head.backbone_out_layers),
                                       "post_process_channels": tuple(head.post_process_channels)}
    assert ours == dataclasses.asdict(CHMV2_CONFIG)
    assert (vit.embed_dim, vit.depth, vit.n_storage_tokens) == (1024, 24, 4)


def test_what_cannot_be_expressed_is_refused(tmp_path):
    cfg = CHMv2Config().to_dict()
    cfg["backbone_config"]["apply_layernorm"] = False
    with pytest.raises(CheckpointFormatError, match="apply_layernorm=False"): hf_chmv2_configs(cfg, {})
    dd_like = build_depther(DinoVisionTransformer(ViTConfig.tiny(depth=4)),
                            dataclasses.replace(DD_7B_CONFIG, backbone_out_layers=(0, 1, 2, 3), channels=16,
                                                post_process_channels=(8,) * 4))
    with pytest.raises(CheckpointFormatError, match="BatchNorm"): save_hf_chmv2(dd_like, tmp_path / "dd")
    same_layer = build_depther(DinoVisionTransformer(ViTConfig.tiny(depth=4)),
                               dataclasses.replace(CHMV2_CONFIG, backbone_out_layers=(0, 1, 1, 3), channels=16))
    with pytest.raises(CheckpointFormatError, match="increasing"): save_hf_chmv2(same_layer, tmp_path / "same")
    save_hf(DinoVisionTransformer(ViTConfig.tiny()), tmp_path / "vit")  # a backbone directory, not CHMv2
    with pytest.raises(CheckpointFormatError, match="model_type 'dinov3_vit'"): load_hf_chmv2(tmp_path / "vit")
