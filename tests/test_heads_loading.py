"""Released head files load key for key: official key lists on `meta`, head + backbone files, combined state dicts, clear errors."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import dinov3nb
from dinov3nb.heads.classifier import dinov3_vit7b16_lc
from dinov3nb.heads.depth import DepthHeadConfig, dinov3_vit7b16_dd, dinov3_vitl16_chmv2
from dinov3nb.heads.loading import RELEASED_HEADS, official_key_diffs
from dinov3nb.models.backbones import n_parameters
from dinov3nb.models.checkpoints import CheckpointMismatchError, UnsafeCheckpointError
from dinov3nb.models.vit import DinoVisionTransformer

CONSTRUCTORS = {"dinov3_vit7b16_lc": dinov3_vit7b16_lc, "dinov3_vit7b16_dd": dinov3_vit7b16_dd,
                "dinov3_vitl16_chmv2": dinov3_vitl16_chmv2}
CASES = {"dinov3_vit7b16_lc": "classifier", "dinov3_vit7b16_dd": "depther", "dinov3_vitl16_chmv2": "chmv2"}


def test_constructors_are_public():
    for name in CONSTRUCTORS: assert getattr(dinov3nb, name) is CONSTRUCTORS[name]


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_official_head_keys_match_exactly_on_meta(reference_dir, name):
    entry = json.loads((reference_dir / "heads" / "official_head_keys.json").read_text())[name]
    model = CONSTRUCTORS[name](device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert official_key_diffs(model, RELEASED_HEADS[name], entry) == []
    head = model.get_submodule(RELEASED_HEADS[name].head_prefix.rstrip("."))
    assert n_parameters(model) == entry["n_params_total"]
    assert n_parameters(head) == entry["n_params_without_backbone"]
    assert sum(t.numel() for t in head.state_dict().values()) == entry["head_checkpoint"]["n_elements"]
    assert {k for k, v in head.state_dict().items() if v.dtype == torch.int64} == set(entry["head_checkpoint"]["non_fp32_dtypes"])


def tiny_case(reference_dir, name):
    "The reference case of hub entry `name`: its manifest entry, tensors and full state dict (hub prefixes)."
    entry = json.loads((reference_dir / "heads" / "manifest.json").read_text())["cases"][CASES[name]]
    t = load_file(reference_dir / "heads" / entry["file"])
    return entry, t, {k[len("state."):]: v for k, v in t.items() if k.startswith("state.")}


def build_tiny(name, entry, **kw):
    "The constructor of `name` on the case's tiny backbone (and its head options)."
    backbone = DinoVisionTransformer(**entry["backbone_kwargs"])
    if name == "dinov3_vit7b16_lc": return CONSTRUCTORS[name](backbone=backbone, **kw)
    return CONSTRUCTORS[name](backbone=backbone, cfg=DepthHeadConfig.from_official(entry["decoder_config"]), **kw)


def output(name, model, t):
    with torch.no_grad(): return model(t["in1.image"]), t["in1.logits" if name.endswith("_lc") else "in1.depth"]


def split(sd, spec):
    "The two released files of a full state dict: (head file, backbone file), official key names, prefixes stripped."
    head = {k[len(spec.head_prefix):]: v for k, v in sd.items() if k.startswith(spec.head_prefix)}
    backbone = {k[len(spec.backbone_prefix):]: v for k, v in sd.items() if k.startswith(spec.backbone_prefix)}
    assert len(head) + len(backbone) == len(sd)
    return head, backbone


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_released_head_file_and_backbone_file_load(reference_dir, tmp_path, name):
    entry, t, sd = tiny_case(reference_dir, name)
    head, backbone = split(sd, RELEASED_HEADS[name])
    torch.save(head, tmp_path / "head-0123abcd.pth")  # as downloaded: a plain state dict, no prefix
    torch.save(backbone, tmp_path / "backbone.pth")
    model = build_tiny(name, entry, weights=tmp_path / "head-0123abcd.pth", backbone_weights=tmp_path / "backbone.pth")
    ours, ref = output(name, model, t)
    assert (ours - ref).abs().max() <= 1e-4 + 1e-5 * ref.abs().max()


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_one_combined_state_dict_with_the_hub_prefixes_loads(reference_dir, tmp_path, name, fmt):
    entry, t, sd = tiny_case(reference_dir, name)
    path = tmp_path / f"combined.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors": save_file(sd, path)
    else: torch.save({"model": sd} if fmt == "wrapped" else sd, path)
    ours, ref = output(name, build_tiny(name, entry, weights=path), t)
    assert (ours - ref).abs().max() <= 1e-4 + 1e-5 * ref.abs().max()


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_wrong_files_are_errors_naming_the_keys(reference_dir, tmp_path, name):
    entry, _, sd = tiny_case(reference_dir, name)
    spec = RELEASED_HEADS[name]
    head, backbone = split(sd, spec)
    dropped = sorted(head)[0]
    torch.save({k: v for k, v in head.items() if k != dropped} | {"surplus.weight": torch.ones(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match=rf"missing keys: {dropped}.*unexpected keys: surplus.weight"):
        build_tiny(name, entry, weights=tmp_path / "bad.pth")
    torch.save(backbone, tmp_path / "backbone.pth")  # the backbone given as the head
    with pytest.raises(CheckpointMismatchError, match="backbone_weights="):
        build_tiny(name, entry, weights=tmp_path / "backbone.pth")
    key = next(k for k, v in head.items() if v.ndim >= 2)  # the linear layer, or a conv
    bad = dict(head); bad[key] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: .*\(file \[3, 3\], model \["):
        build_tiny(name, entry, weights=tmp_path / "shape.pth")
    combined = dict(sd); combined.pop(spec.backbone_prefix + "cls_token")
    torch.save(combined, tmp_path / "combined.pth")
    with pytest.raises(CheckpointMismatchError, match=rf"missing keys: {spec.backbone_prefix}cls_token"):
        build_tiny(name, entry, weights=tmp_path / "combined.pth")
    torch.save(sd, tmp_path / "full.pth")
    with pytest.raises(ValueError, match="do not also pass backbone_weights"):
        build_tiny(name, entry, weights=tmp_path / "full.pth", backbone_weights=tmp_path / "backbone.pth")
    torch.save({k: v for k, v in backbone.items() if k != "norm.weight"}, tmp_path / "bb.pth")
    with pytest.raises(CheckpointMismatchError, match="norm.weight"):
        build_tiny(name, entry, backbone_weights=tmp_path / "bb.pth")


def test_weights_on_meta_are_refused(reference_dir, tmp_path):
    torch.save({"weight": torch.zeros(1000, 8192), "bias": torch.zeros(1000)}, tmp_path / "head.pth")
    with pytest.raises(ValueError, match="meta"):
        dinov3_vit7b16_lc(tmp_path / "head.pth", device="meta")
    with pytest.raises(ValueError, match="meta"):  # not silently ignored (copying into meta tensors is a no-op)
        dinov3_vitl16_chmv2(backbone_weights=tmp_path / "head.pth", device="meta")


class Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def test_a_head_file_that_runs_code_is_refused_not_executed(tmp_path):
    torch.save({"weight": Evil(tmp_path / "pwned")}, tmp_path / "evil.pth")  # what a malicious head file looks like
    with pytest.raises(UnsafeCheckpointError, match="code execution"):
        dinov3_vit7b16_lc(tmp_path / "evil.pth", backbone=DinoVisionTransformer(embed_dim=32, depth=1, num_heads=2))
    assert not (tmp_path / "pwned").exists()
