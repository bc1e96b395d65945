"Parity of `dinov3nb.models.convnext` with Meta's official ConvNeXt: every stored output and the released key lists."
import json

import pytest
from safetensors.torch import load_file

from dinov3nb.models.convnext import CONVNEXT_SIZES, ConvNeXt
from dinov3nb.testing import check_convnext_reference

TOL = 1e-4


def test_every_stored_output_matches(reference_dir):
    # strict load, official parameter count, shapes asserted; raises past TOL or on a stored output left out
    diffs = check_convnext_reference("convnext_mini", reference_dir, atol=TOL)
    ref = load_file(reference_dir / "convnext_mini.safetensors")
    outputs = {k for k in ref if not k.startswith("state.") and not k.endswith(".image")}
    assert outputs and set(diffs) == outputs, sorted(set(diffs) ^ outputs)
    assert max(diffs.values()) <= TOL, diffs


def test_storage_tokens_empty(reference_dir):
    case = json.loads((reference_dir / "manifest.json").read_text())["cases"]["convnext_mini"]
    image = load_file(reference_dir / "convnext_mini.safetensors")["in0.image"]
    model = ConvNeXt(**case["constructor_kwargs"]).eval()
    out = model.forward_features(image)
    assert out["x_storage_tokens"].shape == (image.shape[0], 0, model.embed_dim)


@pytest.mark.parametrize("size", list(CONVNEXT_SIZES))
def test_official_keys_shapes_and_count(reference_dir, size):
    official = json.loads((reference_dir / "official_hub_keys.json").read_text())[f"dinov3_convnext_{size}"]
    m = ConvNeXt(**CONVNEXT_SIZES[size], device="meta")
    sd = m.state_dict()
    assert list(sd) == list(official["keys"])
    assert {k: list(v.shape) for k, v in sd.items()} == official["keys"]
    # `n_params` counts unique parameters: `norms.3` is `norm`, listed twice in the state dict, counted once
    assert sum(p.numel() for p in m.parameters()) == official["n_params"]
    assert m.norms[3] is m.norm
