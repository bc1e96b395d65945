"""dino.txt alignment training (`dinov3nb.train.align`): `dinov3nb train --config dinotxt` end to end, checkpoints that
load back through the dino.txt loader, run folders never written over, bad caption folders, the contrastive loss
gathered over 2 gloo processes against 1 process, the trainer on 2 torchrun ranks against 1 process, and (slow) what
the tiny alignment learns: zero-shot colour well above chance; shape (xfail) not with a random backbone, well above
chance with a stand-in pretrained one."""
import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

pytest.importorskip("open_clip", reason="dino.txt's tokeniser needs the `text` extra: pip install 'dinov3nb[text]'")

from dinov3nb.heads.dinotxt import dinov3_vitl16_dinotxt_tet1280d20h24l
from dinov3nb.models.checkpoints import load
from dinov3nb.train.align import (AlignTrainer, align_config, clip_loss, confusion_table, load_aligned, shapes_zeroshot)
from dinov3nb.train.distributed import average_gradients, mean_over_ranks
from dinov3nb.train.run import train_main

TINY = ["optim.iterations=4", "optim.warmup_iters=2", "run.checkpoint_period=2", "data.n_images=32", "data.batch_size=8",
        "eval.n_images=12", "run.progress=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("align") / "run"
    torch.manual_seed(0)
    rc = train_main(["--config", "dinotxt", f"run.output_dir={out}", *TINY])
    return rc, out


def test_train_dinotxt_end_to_end(tiny_run, capsys):
    rc, out = tiny_run
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".dinov3nb-run.json", "backbone.safetensors", "checkpoint_0000002.safetensors",
                     "checkpoint_0000004.safetensors", "config.json", "metrics.jsonl"], names
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(l) for l in losses)
    assert losses[0] < math.log(8) + 1.5  # near chance (log b) at the start


def test_checkpoint_loads_back_through_dinotxt_loader(tiny_run):
    _, out = tiny_run
    ck = out / "checkpoint_0000004.safetensors"
    model = load_aligned(ck)
    cfg = align_config("dinotxt", [f"run.output_dir={out}", *TINY])
    again = dinov3_vitl16_dinotxt_tet1280d20h24l(ck, backbone=load(out / "backbone.safetensors"), cfg=cfg.model, text_cfg=cfg.text)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.encode_image(x), again.encode_image(x), rtol=0, atol=0)
    ids = model.tokenize(["a red striped circle at the top left", "a photo of a star"])
    torch.testing.assert_close(model.encode_text(ids), again.encode_text(ids), rtol=0, atol=0)
    r = shapes_zeroshot(model, 12, 32)
    assert sum(map(sum, r["confusion"])) == 12 and r["chance"] == pytest.approx(1 / 6)
    assert confusion_table(r).splitlines()[1].startswith("circle")


def test_run_folder_not_written_over(tiny_run, capsys):
    _, out = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert train_main(["--config", "dinotxt", f"run.output_dir={out}", *TINY]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_trainer_matches_fresh_model_and_learns(tmp_path):
    "A few more iterations on a fixed batch drive the loss down."
    cfg = align_config("dinotxt", [f"run.output_dir={tmp_path / 'r'}", "optim.iterations=12", "optim.warmup_iters=1",
                                   "data.n_images=8", "data.batch_size=8", "run.progress=false", "run.checkpoint_period=100"])
    hist = AlignTrainer(cfg).fit()
    first, last = hist[0]["loss"], min(h["loss"] for h in hist[-3:])
    assert last < first - 0.3, (first, last)


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "no such folder"),
    (lambda root: root.mkdir(), "holds no image-caption pairs"),
    (lambda root: (root.mkdir(), (root / "a.png").write_bytes(b"")), "a.png has no a.txt"),
    (lambda root: (root.mkdir(), (root / "captions.csv").write_text("file,text\nx.png,hi\n")), "needs the columns image and caption"),
    (lambda root: (root.mkdir(), (root / "captions.jsonl").write_text('{"image": "x.png", "caption": "hi"}\n')), "missing"),
])
def test_bad_caption_folder(tmp_path, capsys, make, message):
    root = tmp_path / "pairs"
    make(root)
    assert train_main(["--config", "dinotxt", f"data.dataset={root}", f"run.output_dir={tmp_path / 'run'}", *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and "data.dataset=" in err, err


def test_bad_override(tmp_path, capsys):
    assert train_main(["--config", "dinotxt", "optim.lrr=1", f"run.output_dir={tmp_path}"]) == 2
    assert "unknown config key optim.lrr" in capsys.readouterr().err


# ---- the contrastive loss on 2 gloo processes against 1 process on the whole batch --------------------------------

W, B = 2, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _setup():
    torch.manual_seed(0)
    towers = torch.nn.ModuleDict({"img": torch.nn.Linear(6, 5), "txt": torch.nn.Linear(4, 5)})
    scale = torch.nn.Parameter(torch.tensor(2.0))
    towers.scale = torch.nn.ParameterList([scale])
    g = torch.Generator().manual_seed(1)
    return towers, torch.randn(B, 6, generator=g), torch.randn(B, 4, generator=g)


def _loss(towers, x, y, group=None):
    u, v = F.normalize(towers["img"](x), dim=-1), F.normalize(towers["txt"](y), dim=-1)
    return clip_loss(u, v, towers.scale[0].exp(), group)


def _gather_worker(r:int, port:int, out:str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=r, world_size=W)
    torch.set_num_threads(1)
    towers, x, y = _setup()
    rows = slice(r * B // W, (r + 1) * B // W)
    loss, acc = _loss(towers, x[rows], y[rows])
    loss.backward()
    average_gradients(towers)
    torch.save({"loss": torch.tensor(mean_over_ranks({"l": loss.item()})["l"]),
                "grads": {n: p.grad.clone() for n, p in towers.named_parameters()}}, f"{out}/rank{r}.pt")
    dist.destroy_process_group()


def test_clip_loss_two_processes_match_one(tmp_path):
    mp.spawn(_gather_worker, args=(_free_port(), str(tmp_path)), nprocs=W, join=True)
    towers, x, y = _setup()
    loss, _ = _loss(towers, x, y)
    loss.backward()
    for r in range(W):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for n, p in towers.named_parameters(): torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-4, atol=1e-6)


def test_clip_loss_one_process_is_full_matrix():
    towers, x, y = _setup()
    loss, _ = _loss(towers, x, y)
    u, v = F.normalize(towers["img"](x), dim=-1), F.normalize(towers["txt"](y), dim=-1)
    L = towers.scale[0].exp() * u @ v.T
    ref = (F.cross_entropy(L, torch.arange(B)) + F.cross_entropy(L.T, torch.arange(B))) / 2
    torch.testing.assert_close(loss, ref)


# ---- slow: what the tiny alignment learns --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def preset_run(tmp_path_factory):
    "`dinov3nb train --config dinotxt` as it is (150 iterations of 64 pairs, tiny frozen random ViT, ShapesWorld captions)."
    out = tmp_path_factory.mktemp("preset") / "run"
    torch.manual_seed(0)
    assert train_main(["--config", "dinotxt", f"run.output_dir={out}", "run.progress=false", "eval.n_images=0"]) == 0
    return load_aligned(sorted(out.glob("checkpoint_*.safetensors"))[-1])


def _zeroshot(model, attribute):
    r = shapes_zeroshot(model, 300, 32, attribute=attribute)
    print(f"zero-shot {attribute} accuracy on 300 held-out images {100 * r['accuracy']:.1f} % (chance {100 * r['chance']:.1f} %)\n"
          f"{confusion_table(r)}")
    return r


@pytest.mark.slow
def test_tiny_alignment_zero_shot_colour_well_above_chance(preset_run):
    "Colour prompts ('a photo of a red shape') after the tiny alignment: measured 75.3 % against a chance of 12.5 %."
    r = _zeroshot(preset_run, "colour")
    assert r["accuracy"] >= 4 * r["chance"], r


@pytest.mark.slow
@pytest.mark.xfail(reason="a frozen *random* backbone gives patch tokens without position (LayerScale 1e-5, RoPE only inside "
                          "attention): shape stays at chance (measured 16.7 % after the preset, 14-19 % after 100-300 iterations, "
                          "18-19 % with LayerScale 1 and 2-4 blocks; chance 16.7 %). Even with shape labels a head on those "
                          "tokens reaches 23-28 % and a tiny ViT from scratch 22-27 % in 400-600 iterations: needs a "
                          "pretrained backbone",
                   strict=False)
def test_tiny_alignment_zero_shot_shapes_above_chance(preset_run):
    "Shape prompts after the tiny alignment on a *random* frozen backbone: below; with a stand-in pretrained one: next test."
    r = _zeroshot(preset_run, "shape")
    assert r["accuracy"] >= r["chance"] + 0.10, r  # 300 images: one standard error of chance is 2.2 points


@pytest.mark.slow
def test_tiny_alignment_on_a_standin_backbone_names_shapes(tmp_path):
    """dino.txt's setting at CPU scale: a locked backbone that sees shape (`testing.standin`: a tiny ViT trained for
    1000 steps on ShapesWorld shape and patch labels, never on names or captions), then the `dinotxt` preset as it
    is. Shape prompts ('a photo of a circle'): measured 53.7 % on 300 held-out images against a chance of 16.7 %
    (about 2.5 minutes on 2 cores in all)."""
    from dinov3nb.models.checkpoints import save
    from dinov3nb.testing.standin import shapes_standin_backbone
    backbone, losses = shapes_standin_backbone(iterations=1000)
    assert sum(losses[-50:]) < sum(losses[:50])
    weights = save(backbone, tmp_path / "standin.safetensors")
    torch.manual_seed(0)
    out = tmp_path / "run"
    assert train_main(["--config", "dinotxt", f"backbone_weights={weights}", f"run.output_dir={out}", "run.progress=false",
                       "eval.n_images=0"]) == 0
    r = _zeroshot(load_aligned(sorted(out.glob("checkpoint_*.safetensors"))[-1]), "shape")
    assert r["accuracy"] >= 2 * r["chance"], r  # well above chance: 33.3 % or more, 5 standard errors of chance


# ---- the trainer on 2 gloo ranks (torchrun) against 1 process with the same global batch ---------------------------

def test_two_ranks_same_trajectory_as_one_process(tmp_path):
    import subprocess, sys
    from safetensors.torch import load_file
    root = Path(__file__).resolve().parents[1]
    common = ["optim.iterations=3", "optim.warmup_iters=1", "run.checkpoint_period=3", "data.n_images=16", "eval.n_images=0",
              "run.progress=false"]
    script = tmp_path / "entry.py"
    script.write_text("import sys; from dinov3nb.train.run import train_main; sys.exit(train_main(sys.argv[1:]))")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(script), "--config", "dinotxt", f"run.output_dir={tmp_path / 'w2'}",
           "data.batch_size=4", *common]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    assert subprocess.run(cmd, env=env, cwd=root, timeout=300).returncode == 0
    torch.manual_seed(0)
    assert train_main(["--config", "dinotxt", f"run.output_dir={tmp_path / 'w1'}", "data.batch_size=8", *common]) == 0
    loss = lambda d: [json.loads(l)["loss"] for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert loss("w2") == pytest.approx(loss("w1"), rel=1e-4)
    a, b = (load_file(tmp_path / d / "checkpoint_0000003.safetensors") for d in ("w2", "w1"))
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
