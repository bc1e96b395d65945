"""Checkpoint reading: formats, architecture inference and clear errors for bad files."""
import json
import os

import pytest
import torch

from dinov3nb.models.backbones import build
from dinov3nb.models.checkpoints import (CheckpointMismatchError, CheckpointReadError, UnsafeCheckpointError, load,
                                         load_weights_into, save)
from dinov3nb.models.convert import CheckpointFormatError, detect_format, infer_config
from dinov3nb.models.presets import match_preset
from dinov3nb.models.convnext import ConvNeXt, ConvNeXtConfig
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig


@pytest.fixture
def vit_file(tmp_path):
    torch.manual_seed(0)
    model = DinoVisionTransformer(ViTConfig.tiny()).eval()
    path = tmp_path / "vit.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_every_official_key_list_is_recognised(reference_dir):
    official = json.loads((reference_dir / "official_hub_keys.json").read_text())
    for name, entry in official.items():
        sd = {k: torch.empty(v, device="meta") for k, v in entry["keys"].items()}
        assert detect_format(sd).startswith("official_"), name
        dataset = "sat493m" if "sat" in name else "lvd1689m"
        assert match_preset(infer_config(sd), dataset) == name, name


def test_convnext_pth_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ConvNeXt(ConvNeXtConfig.tiny()).eval()
    torch.save(model.state_dict(), tmp_path / "cnx.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "cnx.pth").forward_features(x)["x_norm_clstoken"],
                           model.forward_features(x)["x_norm_clstoken"])


def test_student_of_a_training_checkpoint(tmp_path, vit_file):
    model, _ = vit_file
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    torch.save({"student": sd, "teacher": {k: v + 1 for k, v in sd.items()}}, tmp_path / "t.pth")
    assert torch.equal(load(tmp_path / "t.pth", which="student").cls_token, model.cls_token)
    assert torch.equal(load(tmp_path / "t.pth").cls_token, model.cls_token + 1)


def test_sat_normalisation_from_metadata(tmp_path, vit_file):
    model, _ = vit_file
    model.normalization = "sat"
    assert load(save(model, tmp_path / "m.safetensors")).normalization == "sat"


class Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weights": Evil(marker)}, path)  # what a malicious .pth looks like
    with pytest.raises(UnsafeCheckpointError, match="code execution"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize("name, data", [("random.pth", bytes(range(256)) * 16), ("empty.safetensors", b""),
                                        ("text.safetensors", b"not a checkpoint at all")], ids=["random", "empty", "text"])
def test_corrupted_files(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CheckpointReadError, match="truncated or corrupted"):
        load(tmp_path / name)


def test_truncated_pth(tmp_path, vit_file):
    _, path = vit_file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointReadError, match="cut.pth"):
        load(cut)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointReadError, match="no checkpoint at"):
        load(tmp_path / "missing.pth")


def test_unknown_layout(tmp_path):
    torch.save({"encoder.weight": torch.ones(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointFormatError, match="unrecognised checkpoint layout"):
        load(tmp_path / "other.pth")


def test_wrong_architecture_names_the_difference(tmp_path):
    small = build("dinov3_vits16", device="meta")
    state = {k: torch.zeros(v.shape) for k, v in small.state_dict().items()}
    torch.save(state, tmp_path / "vits16.pth")
    target = DinoVisionTransformer(ViTConfig.tiny(embed_dim=96, num_heads=3))
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights_into(target, tmp_path / "vits16.pth")
    msg = str(err.value)
    assert "shape mismatches" in msg and "dinov3_vits16" in msg and "dinov3nb.load" in msg
