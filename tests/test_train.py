"""End-to-end training on CPU: every tiny preset runs, lowers its loss and writes checkpoints that load;
continued pretraining from a saved backbone; exact resume in-process and after SIGKILL; bad configs."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov3nb.models.checkpoints import load, save
from dinov3nb.eval.cli import eval_main
from dinov3nb.train.checkpointing import checkpoints, export_backbone
from dinov3nb.train.config import PRESETS, ConfigError
from dinov3nb.train.run import load_config, train_main
from dinov3nb.train.trainer import Trainer
from dinov3nb.models.vit import DinoVisionTransformer

ROOT = Path(__file__).resolve().parents[1]


def run(preset: str, out: Path, **over) -> list[dict]:
    "Train `preset` into `out` with dotted overrides; return the metrics."
    args = [f"run.output_dir={out}"] + [f"{k}={v}" for k, v in over.items()]
    return Trainer(load_config(preset, args)).fit()


def assert_learns(hist: list[dict], n: int = 5):
    first = np.mean([h["total_loss"] for h in hist[:n]])
    last = np.mean([h["total_loss"] for h in hist[-n:]])
    assert np.isfinite(last) and last < first - 0.2, (first, last)


def assert_loads(out: Path, embed_dim: int):
    "The newest checkpoint loads with weights_only, and `dinov3nb.load` reads its EMA teacher."
    ck = torch.load(checkpoints(out)[-1], weights_only=True)
    assert {"student", "teacher", "optimizer", "rng", "iteration", "config"} <= set(ck)
    model = load(checkpoints(out)[-1])
    assert isinstance(model, DinoVisionTransformer) and model.embed_dim == embed_dim
    sd = model.state_dict()
    assert all(torch.equal(sd[k], ck["teacher"]["backbone." + k]) for k in sd)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    hist = run("tiny_pretrain", out)
    assert_learns(hist)
    return out


def test_tiny_pretrain(pretrained):
    assert [p.name for p in checkpoints(pretrained)] == ["checkpoint_0000010.pt", "checkpoint_0000020.pt", "checkpoint_0000030.pt"]
    assert_loads(pretrained, 64)
    lines = [json.loads(l) for l in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == list(range(30))
    assert {"lr", "weight_decay", "momentum", "teacher_temp", "dino_local_crops_loss", "ibot_loss", "koleo_loss",
            "backbone_grad_norm"} <= set(lines[0])


def test_tiny_gram(tmp_path):
    hist = run("tiny_gram", tmp_path)
    assert_learns(hist)
    assert all(np.isfinite(h["gram_loss"]) for h in hist)
    ck = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    assert ck["n_gram_updates"] == 3  # refreshed after iterations 9, 19 and 29
    assert all(torch.equal(v, ck["teacher"]["backbone." + k]) for k, v in ck["gram_teacher"].items())
    assert_loads(tmp_path, 64)


def test_tiny_highres(tmp_path):
    hist = run("tiny_highres", tmp_path)
    assert_learns(hist)
    assert_loads(tmp_path, 64)


def test_tiny_distill(pretrained, tmp_path):
    teacher = checkpoints(pretrained)[-1]
    hist = run("tiny_distill", tmp_path, **{"distill.teacher": teacher})
    assert_learns(hist)
    assert_loads(tmp_path, 32)  # the exported model is the student's EMA, not the frozen teacher


def test_continued_pretraining(pretrained, tmp_path):
    backbone = export_backbone(checkpoints(pretrained)[-1], tmp_path / "backbone.safetensors")
    start = load(backbone).state_dict()
    out = tmp_path / "continued"
    tr = Trainer(load_config("tiny_pretrain", [f"run.output_dir={out}", f"init.backbone={backbone}",
                                              "init.head_warmup_iters=5", "run.checkpoint_period=5", "run.max_to_keep=10"]))
    assert all(torch.equal(start[k], v) for k, v in tr.models.student["backbone"].state_dict().items())
    hist = tr.fit()
    assert_learns(hist)
    ck5 = torch.load(out / "checkpoint_0000005.pt", weights_only=True)["student"]
    assert all(torch.equal(start[k[len("backbone."):]], v) for k, v in ck5.items() if k.startswith("backbone."))  # frozen
    assert not torch.equal(ck5["dino_head.mlp.0.weight"], tr.models.student["dino_head"].mlp[0].weight)  # heads trained
    final = torch.load(checkpoints(out)[-1], weights_only=True)["student"]
    assert not torch.equal(final["backbone.blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])


def test_resume_in_process(pretrained, tmp_path):
    run("tiny_pretrain", tmp_path, **{"run.iterations": 13, "run.checkpoint_period": 13})
    tr = Trainer(load_config("tiny_pretrain", [f"run.output_dir={tmp_path}"]), resume=True)
    assert tr.start == 13
    tr.fit()
    a = torch.load(checkpoints(pretrained)[-1], weights_only=True)
    b = torch.load(checkpoints(tmp_path)[-1], weights_only=True)
    for part in ("student", "teacher"):
        assert max((a[part][k] - b[part][k]).abs().max().item() for k in a[part]) <= 1e-6


def test_resume_refuses_other_config(pretrained, tmp_path):
    run("tiny_pretrain", tmp_path, **{"run.iterations": 2})
    with pytest.raises(ConfigError, match="optim.lr"):
        Trainer(load_config("tiny_pretrain", [f"run.output_dir={tmp_path}", "optim.lr=0.5"]), resume=True)


def _child(out: Path, *extra: str) -> list[str]:
    code = "import sys; from dinov3nb.train.run import train_main; sys.exit(train_main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "--config", "tiny_pretrain", f"run.output_dir={out}", "run.iterations=40",
            "run.checkpoint_period=5", "run.max_to_keep=20", *extra]


def test_resume_after_sigkill(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_child(tmp_path / "whole"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    p = subprocess.Popen(_child(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (killed / "checkpoint_0000010.pt").exists():
        assert p.poll() is None, "the child ended before it could be killed"
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (killed / "checkpoint_0000040.pt").exists(), "the child finished before SIGKILL"
    done = len(checkpoints(killed))
    subprocess.run(_child(killed, "--resume"), check=True, env=env, capture_output=True)
    a = torch.load(tmp_path / "whole" / "checkpoint_0000040.pt", weights_only=True)
    b = torch.load(killed / "checkpoint_0000040.pt", weights_only=True)
    assert done < 8
    for part in ("student", "teacher"):
        assert max((a[part][k] - b[part][k]).abs().max().item() for k in a[part]) <= 1e-6
    lines = [json.loads(l)["iteration"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(40))


@pytest.mark.parametrize("over, msg", [
    (["optim.nope=1"], "unknown config key optim.nope"),
    (["data.batch_size=eight"], "data.batch_size='eight'"),
    (["crops.global_crops_size=30"], "crops.global_crops_size=30 is not a positive multiple"),
    (["resolutions=[{global_crops_size: 32, local_crops_size: 12}]"], "resolutions[0].local_crops_size=12"),
    (["gram.use_loss=true"], "crops.gram_teacher_crops_size"),
    (["init.backbone=/no/such/file.pth"], "init.backbone"),
])
def test_bad_configs_fail_before_training(over, msg, tmp_path):
    with pytest.raises(ConfigError) as e: load_config("tiny_pretrain", over + [f"run.output_dir={tmp_path}"])
    assert msg in str(e.value)
    assert not any(tmp_path.iterdir())


def test_empty_dataset_fails_before_training(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    with pytest.raises(ConfigError, match="data.dataset: no image files"):
        Trainer(load_config("tiny_pretrain", [f"data.dataset={tmp_path / 'images'}", f"run.output_dir={tmp_path / 'out'}"]))
    assert not (tmp_path / "out").exists()
    assert train_main(["--config", "tiny_pretrain", "optim.epochs=x"]) == 2
    assert "optim.epochs='x'" in capsys.readouterr().err


def test_image_folder_training(tmp_path):
    from dinov3nb.shapesworld import ShapesWorld, save_image_folder
    save_image_folder(ShapesWorld(8, 64), tmp_path / "imgs")
    hist = run("tiny_pretrain", tmp_path / "out", **{"data.dataset": tmp_path / "imgs", "run.iterations": 3})
    assert len(hist) == 3 and all(np.isfinite(h["total_loss"]) for h in hist)


def test_presets_listed():
    assert {"pretrain", "gram", "highres", "distill", "tiny_pretrain", "tiny_gram", "tiny_highres", "tiny_distill"} <= set(PRESETS)


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'dinov3nb[train]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    hist = run("tiny_pretrain", out, **{"run.iterations": 3, "run.tensorboard": "true"})
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ea = EventAccumulator(str(out / "tensorboard")); ea.Reload()
    assert {"total_loss", "lr", "ibot_loss", "backbone_grad_norm"} <= set(ea.Tags()["scalars"])
    loss = ea.Scalars("total_loss")
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == pytest.approx([h["total_loss"] for h in hist], rel=1e-6)  # stored as fp32


def test_tensorboard_missing_fails_before_training(tmp_path, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"run.tensorboard=true needs the tensorboard package: pip install tensorboard"):
        load_config("tiny_pretrain", ["run.tensorboard=true", f"run.output_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_tiny_pretrain_learns_features_that_beat_random_init(tmp_path):
    """A few minutes of `tiny_pretrain` on ShapesWorld: the DINO and iBOT losses leave their uniform values, and
    k-NN on the teacher's CLS features of held-out images beats the same architecture at random initialisation."""
    hist = run("tiny_pretrain", tmp_path / "run", **{"optim.epochs": 60, "data.batch_size": 16, "data.n_images": 512,
                                                      "run.checkpoint_period": 600})
    first, last = ({k: np.mean([h[k] for h in part]) for k in ("dino_global_crops_loss", "ibot_loss")} for part in (hist[:50], hist[-50:]))
    print("first 50 iterations:", first, "last 50:", last)
    assert last["dino_global_crops_loss"] < math.log(256) - 0.1, last  # the teacher's targets are no longer uniform
    assert last["ibot_loss"] < first["ibot_loss"] - 0.1, (first, last)
    weights = {"trained": export_backbone(checkpoints(tmp_path / "run")[-1], tmp_path / "trained.safetensors")}
    torch.manual_seed(0)
    weights["random"] = save(DinoVisionTransformer(load(weights["trained"]).cfg).eval(), tmp_path / "random.safetensors")
    top1 = {}
    for name, w in weights.items():
        assert eval_main(["knn", "--weights", str(w), "--data", "shapesworld", "--size", "32", "--n-train", "2000",
                          "--n-test", "2000", "--ks", "20", "--out", str(tmp_path / name), "--quiet"]) == 0
        top1[name] = json.loads((tmp_path / name / "results.json").read_text())[-1]["metrics"]["top1@20"]
    print(f"k-NN top-1 (k=20, 2000 held-out images, chance 16.7 %): trained {top1['trained']:.1f} %, random init {top1['random']:.1f} %")
    assert top1["trained"] >= top1["random"] + 2.0, top1  # 2 points = 2.2 standard errors of the difference
