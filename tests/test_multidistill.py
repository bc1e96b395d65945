"""Multi-student distillation: the config, the rank split, students trained together equal students trained alone
(one process, and two gloo ranks with one student each), exact resume (in-process and after SIGKILL), the command line."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov3nb.models.checkpoints import load
from dinov3nb.train.multidistill import MultiTrainer, peer_ranks, split_ranks
from dinov3nb.train.checkpointing import checkpoints, export_backbone
from dinov3nb.train.config import PRESETS, ConfigError, student_config
from dinov3nb.train.run import load_config, train_main
from dinov3nb.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = ("narrow", "wide")
# deterministic and fast whatever the tiny defaults: 4 images a step, 2 local crops; layer scale 0.1 keeps KoLeo's
# nearest neighbours away from fp32 ties (see tests/test_distributed.py) so that runs on other ranks compare
FAST = ("data.batch_size=4", "crops.local_crops_number=2", "student.layerscale_init=0.1", "run.checkpoint_period=2",
        "run.max_to_keep=10")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    "A teacher checkpoint: 4 iterations of tiny pretraining."
    out = tmp_path_factory.mktemp("teacher")
    Trainer(load_config("tiny_pretrain", [f"run.output_dir={out}", "run.iterations=4", "data.batch_size=4"])).fit()
    return checkpoints(out)[-1]


def multi(teacher: Path, out: Path, *over: str) -> list[str]:
    return [f"distill.teacher={teacher}", f"run.output_dir={out}", *FAST, *over]


def alone(teacher: Path, out: Path, name: str, *over: str) -> dict:
    "A one-student `tiny_distill` run of student `name` of `tiny_multidistill`; its final checkpoint."
    width = {"narrow": [], "wide": ["student.embed_dim=64"]}[name]
    Trainer(load_config("tiny_distill", multi(teacher, out, *width, *over))).fit()
    return torch.load(checkpoints(out)[-1], weights_only=True)


def final(out: Path) -> dict:
    return torch.load(checkpoints(out)[-1], map_location="cpu", weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in b if b[k].is_floating_point())


def test_presets_and_config():
    assert {"tiny_multidistill", "multidistill"} <= set(PRESETS)
    cfg = PRESETS["multidistill"]()
    assert [(student_config(cfg, i).student.embed_dim, student_config(cfg, i).student.patch_size) for i in range(3)] == \
        [(384, 16), (768, 16), (1024, 16)]


def test_students_from_key_value(teacher, tmp_path):
    cfg = load_config("tiny_multidistill", multi(teacher, tmp_path) + [
        "distill.students=[{name: s, student: {embed_dim: 48, num_heads: 3}}, {name: t, optim: {lr: 0.01}}]"])
    s, t = student_config(cfg, 0), student_config(cfg, 1)
    assert (s.student.embed_dim, s.student.num_heads, s.optim.lr) == (48, 3, cfg.optim.lr)
    assert (t.student.embed_dim, t.optim.lr) == (cfg.student.embed_dim, 0.01)
    assert s.run.output_dir == str(tmp_path / "s")


@pytest.mark.parametrize("students, msg", [
    ("[]", "distill.students is empty"),
    ("[{name: a}, {name: a}]", "two students are named 'a'"),
    ("[{name: a, student: {embed_dim: x}}]", "distill.students[0].student.embed_dim='x'"),
    ("[{name: a, student: {nope: 1}}]", "unknown config key distill.students[0].student.nope"),
    ("[{name: a, optim: {epoch_length: 3}}]", "distill.students[0].optim.epoch_length"),
    ("[{name: a, student: {patch_size: 16}}]", "distill.students[0] (a): crops.patch_size=8 differs"),
    ("[{student: {}}]", "distill.students[0]"),
    ("[{name: a, student: 3}]", "distill.students[0].student=3 must be a mapping"),
])
def test_bad_students_fail_before_training(teacher, tmp_path, students, msg):
    with pytest.raises(ConfigError) as e: load_config("tiny_multidistill", multi(teacher, tmp_path) + [f"distill.students={students}"])
    assert msg in str(e.value)
    assert not any(tmp_path.iterdir())


def test_students_need_distillation(tmp_path):
    with pytest.raises(ConfigError, match="distill.students needs distill.enabled=true"):
        load_config("tiny_pretrain", [f"run.output_dir={tmp_path}", "distill.students=[{name: a}]"])


def test_rank_split():
    assert split_ranks(4, 2) == [[0, 1], [2, 3]] and peer_ranks(4, 2) == [[0, 2], [1, 3]]
    with pytest.raises(ConfigError, match="cannot be split evenly among 2 students"): split_ranks(3, 2)


def test_one_process_students_equal_students_alone(teacher, tmp_path):
    mt = MultiTrainer(load_config("tiny_multidistill", multi(teacher, tmp_path / "multi", "run.iterations=2")))
    assert all(tr.models.teacher is mt.teacher for tr in mt.trainers)
    hist = mt.fit()
    assert sorted(hist) == list(STUDENTS) and all(len(h) == 2 for h in hist.values())
    for name in STUDENTS:
        a, b = final(tmp_path / "multi" / name), alone(teacher, tmp_path / name, name, "run.iterations=2")
        for part in ("student", "teacher"): assert all(torch.equal(a[part][k], b[part][k]) for k in b[part]), (name, part)
        model = load(export_backbone(checkpoints(tmp_path / "multi" / name)[-1], tmp_path / f"{name}.safetensors"))
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, {"narrow": 32, "wide": 64}[name])


@pytest.mark.slow
def test_resume_when_one_student_is_a_checkpoint_ahead(teacher, tmp_path):
    "A run killed between two students' checkpoints resumes both from the newest iteration they share."
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    MultiTrainer(load_config("tiny_multidistill", multi(teacher, whole, "run.iterations=4"))).fit()
    MultiTrainer(load_config("tiny_multidistill", multi(teacher, cut, "run.iterations=4"))).fit()
    (cut / "wide" / "checkpoint_0000004.pt").unlink()  # killed after narrow's checkpoint 4, before wide's
    mt = MultiTrainer(load_config("tiny_multidistill", multi(teacher, cut, "run.iterations=4")), resume=True)
    assert [tr.start for tr in mt.trainers] == [2, 2]
    mt.fit()
    for name in STUDENTS:
        a, b = final(whole / name), final(cut / name)
        for part in ("student", "teacher"): assert max_diff(a[part], b[part]) <= 1e-6
        assert [json.loads(l)["iteration"] for l in (cut / name / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


@pytest.mark.slow
def test_cli_tiny_multidistill_learns(tmp_path, capsys):
    "`dinov3nb train --config tiny_multidistill distill.teacher=PATH`: both students lower their loss."
    t_out = tmp_path / "teacher"
    assert train_main(["--config", "tiny_pretrain", f"run.output_dir={t_out}"]) == 0
    out = tmp_path / "multi"
    assert train_main(["--config", "tiny_multidistill", f"distill.teacher={checkpoints(t_out)[-1]}", f"run.output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    for name in STUDENTS:
        assert f"checkpoints in {out / name}: " in printed
        loss = [json.loads(l)["total_loss"] for l in (out / name / "metrics.jsonl").read_text().splitlines()]
        first, last = np.mean(loss[:5]), np.mean(loss[-5:])
        print(f"{name}: total loss {first:.3f} -> {last:.3f}")
        assert np.isfinite(last) and last < first - 0.2, (name, first, last)


# ---- several processes --------------------------------------------------------------------------------------------

TRAIN = "import sys; from dinov3nb.train.run import train_main; sys.exit(train_main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, **popen) -> subprocess.Popen:
    "`dinov3nb train --config tiny_multidistill ARGS` on `nproc` gloo ranks."
    script = Path(popen.pop("script_dir")) / "train_entry.py"
    script.write_text(TRAIN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(script), "--config", "tiny_multidistill", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, cwd=ROOT, **popen)


ITERS = 6


@pytest.fixture(scope="module")
def two_ranks(teacher, tmp_path_factory) -> Path:
    "2 ranks, 2 students: each student on one rank, the teacher's forward split between the two."
    out = tmp_path_factory.mktemp("w2") / "run"
    p = torchrun(multi(teacher, out, f"run.iterations={ITERS}"), script_dir=out.parent, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-3000:]
    return out


@pytest.mark.slow
def test_two_ranks_students_equal_students_alone(teacher, two_ranks, tmp_path):
    # Each rank loads the whole batch of 4 images (a group of one rank: the data of a 1-process run) and runs the teacher
    # on 2 of them; the peers swap the bottleneck features. Only the teacher's row count differs from the runs alone, so
    # the targets differ by the fp32 rounding of matrix products over other row counts, which 6 Adam steps carry into
    # the weights: measured 1.4e-7 (narrow) and 2.4e-7 (wide) max abs; one changed image moves them by ~1e-2.
    for name in STUDENTS:
        a = final(two_ranks / name)
        assert a["iteration"] == ITERS and a["world_size"] == 1  # one rank per student
        b = alone(teacher, tmp_path / name, name, f"run.iterations={ITERS}")
        d = max(max_diff(a[p], b[p]) for p in ("student", "teacher"))
        print(f"{name}: 2 ranks vs alone, max abs weight difference {d:.2e}")
        assert d <= 1e-6, (name, d)
        la = [json.loads(l)["total_loss"] for l in (two_ranks / name / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(l)["total_loss"] for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert la == pytest.approx(lb, rel=1e-5) and la[0] != la[-1]


@pytest.mark.slow
def test_two_ranks_killed_then_resumed_match(teacher, two_ranks, tmp_path):
    out = tmp_path / "run"
    args = multi(teacher, out, f"run.iterations={ITERS}")
    p = torchrun(args, script_dir=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "wide" / "checkpoint_0000002.pt").exists():
        assert p.poll() is None, "the run ended before it could be killed"
        time.sleep(0.005)
    os.killpg(p.pid, signal.SIGKILL); p.wait()  # the launcher and both ranks
    assert not (out / "wide" / f"checkpoint_{ITERS:07d}.pt").exists(), "the run finished before SIGKILL"
    p = torchrun(args + ["--resume"], script_dir=tmp_path, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-3000:]
    for name in STUDENTS:
        a, b = final(out / name), final(two_ranks / name)
        for part in ("student", "teacher"): assert max_diff(a[part], b[part]) <= 1e-6, (name, part)
        assert [json.loads(l)["iteration"] for l in (out / name / "metrics.jsonl").read_text().splitlines()] == list(range(ITERS))
