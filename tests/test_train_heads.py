"""`dinov3nb train-head depth`: head files and results written, heads loaded back through the public constructors
with equal outputs, the --overwrite policy, bad data folders, an NYUv2-layout folder; and (slow) the DPT beating the
linear probe on the same frozen backbone."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3nb.heads.depth import DepthHeadConfig, dinov3_vit7b16_dd
from dinov3nb.heads.linear_depth import build_linear_depther
from dinov3nb.models.checkpoints import load, save
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig
from dinov3nb.shapesworld import ShapesWorld
from dinov3nb.train.heads import (HeadTrainConfig, load_depth_head, read_head_metadata, results_table,
                                  train_depth_head, train_head_main)

SMALL = ["--size", "32", "--n-train", "8", "--n-test", "2", "--iterations", "3", "--save-every", "2", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    "Tiny tensors: one thread avoids OpenMP contention with other test processes."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    "A tiny random ViT/8 with 4 blocks, saved as a dinov3nb checkpoint (`--weights`)."
    torch.manual_seed(0)
    vit = DinoVisionTransformer(ViTConfig.tiny(patch_size=8, depth=4, layerscale_init=1.0))
    return save(vit, tmp_path_factory.mktemp("backbone") / "vit.safetensors")


@pytest.mark.parametrize("head", ["dpt", "linear"])
def test_cli_writes_head_and_results_that_load_back(tmp_path, backbone_file, capsys, head):
    out = tmp_path / "run"
    assert train_head_main(["depth", "--head", head, "--weights", str(backbone_file), "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "| head | backbone | data | iterations | RMSE | AbsRel | δ1 |" in printed and f"| {head} |" in printed
    r = json.loads((out / "results.json").read_text())
    assert (r["head"], r["iterations"], r["n_train"], r["n_test"], len(r["loss"])) == (head, 3, 8, 2, 3)
    assert np.isfinite(r["rmse"]) and r["rmse"] > 0 and 0 <= r["delta1"] <= 1 and r["abs_rel"] > 0
    meta = read_head_metadata(out / "head.safetensors")
    assert meta["kind"] == head and meta["iteration"] == 3 and meta["rmse"] == pytest.approx(r["rmse"])
    # the head file loads through the public constructors, with the outputs of the trained model
    backbone = load(backbone_file).eval()
    x = torch.randn(2, 3, 32, 48)
    if head == "dpt":
        model = dinov3_vit7b16_dd(weights=out / "head.safetensors", backbone=backbone, cfg=DepthHeadConfig(**meta["config"]))
    else:
        model = build_linear_depther(backbone, **meta["config"], weights=out / "head.safetensors")
    again = load_depth_head(out / "head.safetensors", backbone)
    with torch.no_grad(): y, y2 = model(x), again(x)
    assert torch.equal(y, y2) and y.shape[-2:] == ((64, 96) if head == "dpt" else (32, 48))  # the DPT upsamples the grid x16: 2x for p=8
    # retraining the same run gives the same head (seeded), and equal outputs
    cfg = HeadTrainConfig(head=head, image_size=32, n_train=8, n_test=2, iterations=3)
    trained, r2 = train_depth_head(backbone, cfg, progress=False)
    with torch.no_grad(): assert torch.allclose(trained(x), y, atol=1e-5)
    assert r2["rmse"] == pytest.approx(r["rmse"], abs=1e-5)


def test_overwrite_policy(tmp_path, backbone_file, capsys):
    args = ["depth", "--head", "linear", "--weights", str(backbone_file), "--out", str(tmp_path), *SMALL]
    assert train_head_main(args) == 0
    before = (tmp_path / "head.safetensors").read_bytes()
    capsys.readouterr()
    assert train_head_main(args + ["--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "head.safetensors" in err and "exists" in err and "--overwrite" in err
    assert (tmp_path / "head.safetensors").read_bytes() == before          # untouched
    assert train_head_main(args + ["--lr", "0.1", "--overwrite"]) == 0
    assert (tmp_path / "head.safetensors").read_bytes() != before
    (tmp_path / "other.txt").write_text("kept")                            # other files in --out are not a conflict
    (tmp_path / "head.safetensors").unlink(); (tmp_path / "results.json").unlink()
    assert train_head_main(args) == 0 and (tmp_path / "other.txt").read_text() == "kept"


def test_bad_data_folder_exits_2_with_the_layout(tmp_path, backbone_file, capsys):
    base = ["depth", "--weights", str(backbone_file), "--out", str(tmp_path / "out"), *SMALL]
    assert train_head_main(base + ["--data", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "nyu" / "train" / "rgb").mkdir(parents=True)
    assert train_head_main(base + ["--data", str(tmp_path / "nyu")]) == 2
    err = capsys.readouterr().err
    assert "train/depth" in err and "expected the layout" in err and "internal error" not in err
    assert not (tmp_path / "out" / "head.safetensors").exists()
    assert train_head_main(["depth", "--out", str(tmp_path / "o2"), *SMALL]) == 2
    assert "--model" in capsys.readouterr().err


def test_nyu_layout_folder(tmp_path, backbone_file):
    root = tmp_path / "nyu"
    w = ShapesWorld(6, size=48, seed=1)
    for split in ("train", "test"):
        (root / split / "rgb").mkdir(parents=True); (root / split / "depth").mkdir(parents=True)
        for i in range(3 if split == "train" else 2):
            s = w.sample(i + (3 if split == "test" else 0))
            Image.fromarray(s.image).save(root / split / "rgb" / f"{i:05d}.png")
            Image.fromarray((s.depth * 1000).round().astype(np.uint16)).save(root / split / "depth" / f"{i:05d}.png")
    out = tmp_path / "out"
    args = ["depth", "--weights", str(backbone_file), "--data", str(root), "--out", str(out), "--size", "32",
            "--iterations", "2", "--quiet"]
    assert train_head_main(args) == 0
    r = json.loads((out / "results.json").read_text())
    assert (r["n_train"], r["n_test"], r["config"]["data"], r["max_depth"]) == (3, 2, str(root), 10.0)


def test_size_must_fit_the_patch_size(tmp_path, backbone_file, capsys):
    assert train_head_main(["depth", "--weights", str(backbone_file), "--out", str(tmp_path), "--size", "36", "--quiet"]) == 2
    assert "multiple of the backbone's patch size 8: use 32 or 40" in capsys.readouterr().err


@pytest.mark.slow
def test_dpt_beats_linear_probe_on_shapesworld():
    "300 iterations each, same frozen random ViT/16 (LayerScale 1), data, layers, loss, bins and schedule."
    torch.manual_seed(0)
    vit = DinoVisionTransformer(ViTConfig.tiny(patch_size=16, depth=4, layerscale_init=1.0)).eval()
    rows = {}
    for head in ("dpt", "linear"):
        cfg = HeadTrainConfig(head=head, image_size=64, n_train=128, n_test=32, iterations=300, n_bins=64)
        _, rows[head] = train_depth_head(vit, cfg, progress=False)
    print(results_table(list(rows.values())))
    dpt, lin = rows["dpt"], rows["linear"]
    assert dpt["rmse"] < 0.9 * lin["rmse"], (dpt["rmse"], lin["rmse"])
    assert dpt["abs_rel"] < lin["abs_rel"] and dpt["delta1"] > lin["delta1"]
