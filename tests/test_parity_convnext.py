"Parity of `dinov3nb.models.convnext` with Meta's official ConvNeXt: every stored output and the released key lists."
import json
from pathlib import Path

import pytest
import torch

from dinov3nb.models.convnext import CONVNEXT_SIZES, ConvNeXt

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
pytestmark = pytest.mark.skipif(not (REF / "convnext_mini.safetensors").exists(),
                                reason=f"official reference outputs not found at {REF} (../shared/reference beside the repo)")
TOL = 1e-4


@pytest.fixture(scope="module")
def ref() -> dict:
    from safetensors.torch import load_file
    return load_file(REF / "convnext_mini.safetensors")


@pytest.fixture(scope="module")
def model(ref) -> ConvNeXt:
    case = json.loads((REF / "manifest.json").read_text())["cases"]["convnext_mini"]
    m = ConvNeXt(**case["constructor_kwargs"]).eval()
    m.load_state_dict({k.removeprefix("state."): v for k, v in ref.items() if k.startswith("state.")}, strict=True)
    assert sum(p.numel() for p in m.parameters()) == case["n_params"]
    return m


def _ours(model: ConvNeXt, ref: dict) -> dict[str, torch.Tensor]:
    "Compute, for every input stored in `ref`, our outputs under the file's names."
    ours = {}
    inputs = sorted({k.split(".")[0] for k in ref if k.startswith("in")})
    with torch.no_grad():
        for i in inputs:
            img = ref[f"{i}.image"]
            for k, v in model.forward_features(img).items():
                if isinstance(v, torch.Tensor): ours[f"{i}.forward_features.{k}"] = v
            pairs = model.get_intermediate_layers(img, n=2, reshape=True, return_class_token=True, norm=True)
            for j, (patches, cls) in enumerate(pairs):
                # the file names the official (patches, cls) pair in the order (cls, patch): `.cls` holds the map
                ours[f"{i}.intermediate_n2_reshape.{j}.cls"] = patches
                ours[f"{i}.intermediate_n2_reshape.{j}.patch"] = cls
    return ours


def test_every_stored_output_matches(model, ref):
    ours = _ours(model, ref)
    outputs = [k for k in ref if not k.startswith("state.") and not k.endswith(".image")]
    assert outputs, "no stored outputs found"
    missing = [k for k in outputs if k not in ours]
    assert not missing, f"stored outputs this test does not produce: {missing}"
    diffs = {}
    for k in outputs:
        assert ours[k].shape == ref[k].shape, f"{k}: shape {tuple(ours[k].shape)} != official {tuple(ref[k].shape)}"
        diffs[k] = (ours[k] - ref[k]).abs().max().item()
    bad = {k: d for k, d in diffs.items() if d > TOL}
    assert not bad, f"max abs diff above {TOL}: {bad}"


def test_storage_tokens_empty(model, ref):
    out = model.forward_features(ref["in0.image"])
    assert out["x_storage_tokens"].shape == (ref["in0.image"].shape[0], 0, model.embed_dim)


@pytest.mark.parametrize("size", list(CONVNEXT_SIZES))
def test_official_keys_shapes_and_count(size):
    official = json.loads((REF / "official_hub_keys.json").read_text())[f"dinov3_convnext_{size}"]
    m = ConvNeXt(**CONVNEXT_SIZES[size], device="meta")
    sd = m.state_dict()
    assert list(sd) == list(official["keys"])
    assert {k: list(v.shape) for k, v in sd.items()} == official["keys"]
    # `n_params` counts unique parameters: `norms.3` is `norm`, listed twice in the state dict, counted once
    assert sum(p.numel() for p in m.parameters()) == official["n_params"]
    assert m.norms[3] is m.norm
