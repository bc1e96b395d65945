"""Parity of the released heads with Meta's code: every tensor of `reference/heads/` for the classifier and the depthers."""
import pytest

from dinov3nb.testing import HEADS_BOUNDS, check_heads_reference, heads_reference_diffs


def test_bounds_are_the_readme_ones():
    # reference/README.md: default 1e-4 absolute; metres and pixels 1e-4 + 1e-5 |ref|. Never loosen them.
    assert HEADS_BOUNDS == [("*.depth*", 1e-4, 1e-5), ("*boxes*", 1e-4, 1e-5), ("*reference*", 1e-4, 1e-5),
                            ("*.proposals", 1e-4, 1e-5), ("*", 1e-4, 0.0)]


@pytest.mark.parametrize("case, n_tensors", [("classifier_lc", 8), ("depther_dpt", 48), ("chmv2_dpt", 47)])
def test_every_stored_tensor_within_bounds(reference_dir, case, n_tensors):
    diffs = check_heads_reference(case, reference_dir / "heads")  # raises if a stored tensor was not compared
    assert len(diffs) == n_tensors
    print(case, {k: f"{v:.1e}" for k, v in diffs.items() if v == max(diffs.values())})


def test_depther_every_stage_bins_depth_and_flip_tta_compared(reference_dir):
    d = heads_reference_diffs("depther", reference_dir / "heads")
    expected = {"padded_image", "decoder.features", "bin_logits", "depth", "depth_tta_flip"}
    expected |= {f"encoder.{l}.{t}" for l in range(4) for t in ("patch", "cls")}
    expected |= {f"decoder.{s}.{l}" for s in ("reassemble", "convs", "fusion") for l in range(4)}
    assert {f"in0.{k}" for k in expected} <= set(d)
    assert {"in1.depth", "in1.padded_image", "in1.decoder.fusion.3"} <= set(d)  # the odd 4x5 grid too
