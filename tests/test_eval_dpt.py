"""`dinov3nb eval depth --head dpt`: a DPT head (trained on the frozen backbone, or read from a head file) evaluated with
flip TTA and a least-squares scale and shift per image; the default linear depth probe is unchanged."""
import json
from argparse import Namespace

import pytest
import torch
from safetensors.torch import save_file

from dinov3nb.eval import dense
from dinov3nb.eval.cli import dense_data, eval_main, eval_model

SMALL = ["--model", "vit_tiny", "--size", "32", "--n-train", "12", "--n-test", "4", "--steps", "5", "--quiet"]


def _last(out) -> dict:
    return json.loads((out / "results.json").read_text())[-1]


def test_default_depth_is_still_the_linear_probe(tmp_path):
    assert eval_main(["depth", *SMALL, "--out", str(tmp_path)]) == 0
    rec = _last(tmp_path)
    a = Namespace(n_train=12, n_test=4, size=32, seed=0)
    tr, te, _ = dense_data("shapesworld", "depth", a)
    r = dense.linear_depth(eval_model("vit_tiny"), tr, te, size=32, steps=5, lr=3e-2, max_depth=10.0, seed=0, progress=False)
    assert rec["protocol"] == "depth" and rec["metrics"] == {k: r[k] for k in ("rmse", "abs_rel", "delta1")}


def test_dpt_head_trained_then_read_back_from_its_file(tmp_path):
    assert eval_main(["depth", "--head", "dpt", *SMALL, "--out", str(tmp_path)]) == 0
    rec = _last(tmp_path)
    assert rec["protocol"] == "depth-dpt" and sorted(rec["metrics"]) == ["abs_rel", "delta1", "rmse"]
    assert 0 <= rec["metrics"]["delta1"] <= 1 and 0 <= rec["metrics"]["rmse"] <= 10
    a = Namespace(n_train=12, n_test=4, size=32, seed=0)
    tr, te, _ = dense_data("shapesworld", "depth", a)
    r = dense.dpt_depth(eval_model("vit_tiny"), tr, te, size=32, steps=5, lr=3e-2, seed=0, progress=False)
    assert r["rmse"] == pytest.approx(rec["metrics"]["rmse"], abs=1e-9)  # the command is this function
    head = tmp_path / "dpt.safetensors"
    save_file({f"decoder.{k}": v.contiguous() for k, v in r["depther"].decoder.state_dict().items()}, str(head))
    assert eval_main(["depth", "--head", "dpt", "--head-weights", str(head), *SMALL, "--out", str(tmp_path)]) == 0
    assert _last(tmp_path)["metrics"]["rmse"] == pytest.approx(r["rmse"], rel=1e-4)  # other bins range, same aligned depth
    assert eval_main(["depth", "--head", "dpt", "--head-weights", str(head), "--align", "none", *SMALL, "--out", str(tmp_path)]) == 0
    assert _last(tmp_path)["metrics"]["rmse"] >= r["rmse"] - 1e-6  # per image, the least-squares fit can only lower the RMSE


def test_scale_and_shift_alignment_is_least_squares():
    torch.manual_seed(0)
    gt = torch.rand(5, 7) * 9 + 1
    valid = gt > 2
    pred = 0.2 * gt + 3 + 0.05 * torch.randn_like(gt)
    aligned = dense.align_scale_shift(pred, gt, valid)
    err = lambda p: (p - gt)[valid].pow(2).sum()
    for ds, dt in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):  # no nearby scale/shift does better
        assert err(aligned) <= err(aligned * (1 + ds) + dt) + 1e-9
    assert dense.align_scale_shift(pred, gt, torch.zeros_like(valid)).equal(pred)  # nothing to fit: unchanged


@pytest.mark.parametrize("argv, message", [
    (["--head-weights", "x.safetensors"], "add --head dpt"),
    (["--head", "dpt", "--head-weights", "missing.safetensors"], "no such file"),
    (["--head", "dpt", "--model", "pixels"], "four ViT layers"),
])
def test_bad_dpt_options_exit_2(argv, message, tmp_path, capsys):
    args = SMALL if "--model" not in argv else SMALL[2:]
    assert eval_main(["depth", *argv, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_head_file_of_another_kind_is_named(tmp_path, capsys):
    f = tmp_path / "lc.safetensors"
    save_file({"weight": torch.zeros(10, 128), "bias": torch.zeros(10)}, str(f))
    assert eval_main(["depth", "--head", "dpt", "--head-weights", str(f), *SMALL, "--out", str(tmp_path)]) == 2
    assert "not a DPT depth head" in capsys.readouterr().err
