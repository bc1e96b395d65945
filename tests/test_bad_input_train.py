"""Bad input and faults for `dinov3nb train` and `dinov3nb submit` (issue 14): every expected failure ends with exit
code 2 and one `dinov3nb <command>: error: ...` paragraph (no traceback), a bug with a short internal error and a
pointer to `--debug`; a run never writes into a folder it does not own, never deletes or replaces files it did not
write, and `--resume` falls back to the newest readable checkpoint. Pre-existing files are compared byte for byte
(hash snapshots) after every refused or finished run."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from dinov3nb.train.checkpointing import RUN_MARKER, checkpoints
from dinov3nb.train.config import ConfigError
from dinov3nb.train.run import train_main

FAST = ["data.batch_size=4", "data.n_images=8", "run.progress=false"]  # the tiny preset, smaller batches


def train(capsys, *args: str) -> tuple[int, str, str]:
    "Run `dinov3nb train ARGS` in-process; return the exit code, stdout and stderr."
    code = train_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, str | None]:
    "Every file (hash) and folder (None) under `folder`, hidden ones included."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(Path(folder).rglob("*"))}


def assert_error(code: int, out: str, err: str, *fragments: str, prog: str = "dinov3nb train"):
    "Exit code 2, one error paragraph naming `fragments`, no traceback."
    assert code == 2, (code, err)
    assert err.startswith(f"{prog}: error: "), err
    for f in fragments: assert f in err, (f, err)
    assert "Traceback" not in out + err
    assert err.count("\n") == 1, err  # one paragraph


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    "Another run's folder: three checkpoints, config.json, metrics.jsonl (and its marker)."
    out = tmp_path_factory.mktemp("earlier") / "run"
    assert train_main(["--config", "tiny_pretrain", f"run.output_dir={out}", "run.iterations=3", "run.checkpoint_period=1",
                       *FAST]) == 0
    assert [p.name for p in checkpoints(out)] == [f"checkpoint_000000{i}.pt" for i in (1, 2, 3)]
    return out


@pytest.fixture
def run_copy(earlier_run, tmp_path) -> Path:
    "A private copy of the earlier run's folder."
    return Path(shutil.copytree(earlier_run, tmp_path / "run"))


@pytest.fixture
def hf_model(tmp_path) -> Path:
    "A downloaded Hugging Face model folder."
    folder = tmp_path / "dinov3-vits16"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["DINOv3ViTModel"], "hidden_size": 384}))
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)))
    (folder / "preprocessor_config.json").write_text("{}")
    return folder


# ---- values where they enter: each a ConfigError naming the key, before anything is built or written -----------------

BAD_VALUES = [
    (["run.max_to_keep=-1"], ["run.max_to_keep=-1", "0 (or null) to keep every one"]),
    (["run.device=tpu"], ["run.device='tpu'", "use cpu or cuda"]),
    (["run.device=cuda:99"], ["run.device='cuda:99'"]),
    (["data.n_images=0"], ["data.n_images=0 must be >= 1"]),
    (["data.batch_size=0"], ["data.batch_size=0 must be >= 2"]),
    (["data.batch_size=-4"], ["data.batch_size=-4 must be >= 2"]),
    (["run.iterations=0"], ["run.iterations=0 must be >= 1"]),
    (["run.iterations=-3"], ["run.iterations=-3 must be >= 1"]),
    (["optim.epochs=0", "run.iterations=null"], ["optim.epochs=0 must be >= 1"]),
    (["optim.epoch_length=0"], ["optim.epoch_length=0 must be >= 1"]),
    (["run.checkpoint_period=0"], ["run.checkpoint_period=0 must be >= 1"]),
    (["run.max_nan_losses=0"], ["run.max_nan_losses=0 must be >= 1"]),
    (["data.num_workers=-1"], ["data.num_workers=-1 must be >= 0"]),
    (["data.image_size=8"], ["data.image_size=8 must be >= 16"]),
    (["data.dataset={tmp}/no-such-images"], ["no-such-images': no such folder"]),
    (["data.dataset={tmp}/a-file"], ["a-file' is a file; pass the folder that holds the images"]),
    (["data.dataset={tmp}/empty"], ["data.dataset: no image files"]),
    (["run.output_dir={tmp}/a-file"], ["a-file' is a file; choose a folder for the run"]),
    (["run.output_dir="], ["run.output_dir"]),
    (["optim.nope=1"], ["unknown config key optim.nope"]),
    (["data.batch_size=eight"], ["data.batch_size='eight' has the wrong type"]),
    (["crops.global_crops_size=30"], ["crops.global_crops_size=30 is not a positive multiple"]),
    (["init.backbone={tmp}/no-such.pth"], ["init.backbone=", "no such file"]),
    (["init.backbone={tmp}/a-file"], ["init.backbone=", "cannot be read as a backbone"]),
    (["distill.enabled=true", "distill.teacher={tmp}/a-file"], ["distill.teacher=", "cannot be read"]),
    (["run.tensorboard=maybe"], ["run.tensorboard='maybe'"]),
    (["foo"], ["override 'foo' is not key=value"]),
    (["=3"], ["override '=3' is not key=value"]),
    (["run.iterations=[1"], ["override 'run.iterations=[1' cannot be parsed"]),
]


@pytest.mark.parametrize("over, fragments", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_value_fails_before_training(over, fragments, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder, not a checkpoint")
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    over = [o.format(tmp=tmp_path) for o in over]
    args = [f"run.output_dir={out}", *FAST, *over] if not any(o.startswith("run.output_dir=") for o in over) else [*FAST, *over]
    assert_error(*train(capsys, "--config", "tiny_pretrain", *args), *fragments)
    assert snapshot(tmp_path) == before  # nothing written: no output folder, no marker


BAD_YAML = [
    ("optim: {lr: [1,\n", ["is not valid YAML", "(line 2, column 1)"]),
    ("a:\n b: 1\n  c: 2\n", ["is not valid YAML: mapping values are not allowed here (line 3, column 4)"]),
    ("- preset: tiny_pretrain\n- run: {iterations: 1}\n", ["holds a list at its top level", "a mapping of sections"]),
    ("tiny_pretrain\n", ["holds a string at its top level"]),
    ("42\n", ["holds a single value at its top level"]),
    ("preset: [tiny_pretrain]\n", ["preset=['tiny_pretrain']", "choose one of"]),
    ("preset: tiny_pretrian\n", ["preset='tiny_pretrian'", "choose one of"]),
    ("preset: tiny_pretrain\nrun: 5\n", ["run must be a mapping of RunConfig fields"]),
    ("preset: tiny_pretrain\noptim:\n  lr: ${nope}\n", ["Interpolation key 'nope' not found"]),
    ("preset: tiny_pretrain\noptim: {lr: 1}\noptim: {lr: 2}\n", ["is not valid YAML", "duplicate key"]),
]


@pytest.mark.parametrize("text, fragments", BAD_YAML, ids=[t.splitlines()[0] for t, _ in BAD_YAML])
def test_bad_yaml_config(text, fragments, tmp_path, capsys):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(text)
    assert_error(*train(capsys, "--config", str(cfg), f"run.output_dir={tmp_path / 'out'}"), str(cfg), *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, fragments", [
    ("tiny_pretrian", ["--config 'tiny_pretrian' is neither a preset", "tiny_pretrain"]),
    ("{tmp}", ["is neither a preset"]),                 # a folder
    ("{tmp}/binary.yaml", ["is not a text file"]),
])
def test_bad_config_argument(config, fragments, tmp_path, capsys):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01 not text")
    assert_error(*train(capsys, "--config", config.format(tmp=tmp_path), f"run.output_dir={tmp_path / 'out'}"), *fragments)


def test_usage_error_is_argparse_exit_2(capsys):
    code, out, err = train(capsys, "optim.lr=1")
    assert code == 2 and "dinov3nb train: error: the following arguments are required: --config" in err
    assert "Traceback" not in out + err


# ---- data safety: a run writes only into its own folder, deletes only its own checkpoints -----------------------------

def test_folder_of_another_run_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    assert_error(*train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", "run.iterations=1", *FAST),
                 "already holds a training run (3 checkpoints, config.json, metrics.jsonl)", "--resume", "run.overwrite=true")
    assert snapshot(run_copy) == before


def test_resume_with_another_config_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    assert_error(*train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", "optim.lr=0.5", *FAST, "--resume"),
                 "cannot resume from", "its config differs in optim.lr")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("flags, fragments", [
    ([], ["holds files that dinov3nb train did not write (config.json, model.safetensors, preprocessor_config.json)",
          "run.overwrite=true"]),
    (["--resume"], ["and no training run to resume"]),
    (["run.overwrite=true"], ["holds config.json, which the run writes, but dinov3nb train did not write it"]),
    (["run.overwrite=true", "--resume"], ["holds config.json, which the run writes"]),
], ids=["new run", "resume", "overwrite", "overwrite resume"])
def test_model_folder_is_never_written(hf_model, flags, fragments, capsys):
    before = snapshot(hf_model)
    assert_error(*train(capsys, "--config", "tiny_pretrain", f"run.output_dir={hf_model}", "run.iterations=1", *FAST, *flags),
                 *fragments)
    assert snapshot(hf_model) == before and not (hf_model / RUN_MARKER).exists()


def test_marker_damaged_is_refused(run_copy, capsys):
    (run_copy / RUN_MARKER).write_text("{not json")
    before = snapshot(run_copy)
    assert_error(*train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", *FAST, "--resume"),
                 f"{RUN_MARKER} cannot be read")
    assert snapshot(run_copy) == before


def test_overwrite_keeps_the_earlier_runs_other_checkpoints(run_copy, capsys):
    "run.overwrite=true replaces the earlier run's files of the same name, never prunes its other checkpoints."
    before = snapshot(run_copy)
    code, out, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", "run.iterations=1",
                           "run.max_to_keep=1", "run.overwrite=true", *FAST)
    assert code == 0, err
    after = snapshot(run_copy)
    for kept in ("checkpoint_0000002.pt", "checkpoint_0000003.pt"): assert after[kept] == before[kept]
    assert after["checkpoint_0000001.pt"] != before["checkpoint_0000001.pt"]  # the new run's
    assert [p.name for p in checkpoints(run_copy)] == ["checkpoint_0000001.pt"]
    marker = json.loads((run_copy / RUN_MARKER).read_text())
    assert {"checkpoint_0000002.pt", "checkpoint_0000003.pt"} <= set(marker["earlier"])
    assert [json.loads(l)["iteration"] for l in (run_copy / "metrics.jsonl").read_text().splitlines()] == [0]


def test_overwrite_writes_beside_other_files(tmp_path, capsys):
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "notes.md").write_text("my notes")
    (out / "mine.yaml").write_text("preset: tiny_pretrain\n")
    (out / "data").mkdir(); (out / "data" / "x.bin").write_bytes(b"\x00" * 64)
    before = snapshot(out)
    assert_error(*train(capsys, "--config", "tiny_pretrain", f"run.output_dir={out}", "run.iterations=1", *FAST),
                 "did not write (data, mine.yaml, notes.md)")
    assert snapshot(out) == before
    code, _, err = train(capsys, "--config", str(out / "mine.yaml"), f"run.output_dir={out}", "run.iterations=1",
                         "run.overwrite=true", *FAST)
    assert code == 0, err
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items())
    assert {RUN_MARKER, "config.json", "metrics.jsonl", "checkpoint_0000001.pt"} <= set(after)


def test_pruning_touches_only_this_runs_checkpoints(run_copy, capsys):
    "A file named like a checkpoint that the run did not write, and the user's notes, survive `run.max_to_keep=1`."
    (run_copy / "checkpoint_0000000.pt").write_bytes(b"a checkpoint copied here from elsewhere")
    (run_copy / "notes.txt").write_text("mine")
    before = snapshot(run_copy)
    code, _, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", "run.iterations=4",
                         "run.checkpoint_period=1", "run.max_to_keep=1", *FAST, "--resume")
    assert code == 0, err
    after = snapshot(run_copy)
    assert after["checkpoint_0000000.pt"] == before["checkpoint_0000000.pt"] and after["notes.txt"] == before["notes.txt"]
    assert [p.name for p in checkpoints(run_copy)] == ["checkpoint_0000004.pt"]
    assert not {"checkpoint_0000001.pt", "checkpoint_0000002.pt", "checkpoint_0000003.pt"} & set(after)


@pytest.mark.parametrize("keep, kept", [("0", [1, 2]), ("null", [1, 2]), ("1", [2])])
def test_max_to_keep(keep, kept, tmp_path, capsys):
    "0 and null keep every checkpoint, N >= 1 the newest N (a negative value is refused above)."
    code, _, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={tmp_path}", "run.iterations=2",
                         "run.checkpoint_period=1", f"run.max_to_keep={keep}", *FAST)
    assert code == 0, err
    assert [p.name for p in checkpoints(tmp_path)] == [f"checkpoint_{i:07d}.pt" for i in kept]


def test_unmarked_run_folder_still_resumes(run_copy, capsys):
    "A run folder written before markers existed (only names a run writes, a training config.json) resumes."
    (run_copy / RUN_MARKER).unlink()
    code, _, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", "run.iterations=4", *FAST, "--resume")
    assert code == 0, err
    assert json.loads((run_copy / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 3
    assert (run_copy / RUN_MARKER).exists()


# ---- --resume falls back to the newest readable checkpoint ------------------------------------------------------------

class Payload:
    "What a malicious checkpoint carries: unpickling it creates a file."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (open, (self.path, "w"))


def damage(path: Path, how: str, tmp_path: Path):
    good = path.read_bytes()
    if how == "truncated": path.write_bytes(good[: len(good) // 2])
    elif how == "empty": path.write_bytes(b"")
    elif how == "garbage": path.write_bytes(b"\x00not a checkpoint" * 100)
    elif how == "unsafe pickle": torch.save({"iteration": Payload(tmp_path / "payload-ran")}, path)
    elif how == "not a training checkpoint": torch.save({"teacher": {}}, path)


@pytest.mark.parametrize("how, why", [
    ("truncated", "it is truncated or damaged (PytorchStreamReader failed reading zip archive"),
    ("empty", "it is empty or cut short"),
    ("garbage", "it is not a PyTorch checkpoint, or it is damaged"),
    ("unsafe pickle", "open) besides tensors and plain values, which a training checkpoint never does; it is not unpickled"),
    ("not a training checkpoint", "is not a training checkpoint of dinov3nb train (no 'iteration')"),
])
def test_resume_falls_back_to_newest_readable(run_copy, how, why, tmp_path, capsys):
    newest = run_copy / "checkpoint_0000003.pt"
    damage(newest, how, tmp_path)
    with (run_copy / "metrics.jsonl").open("a") as f: f.write('{"iteration": 3, "total_lo')  # a line a crash cut short
    before = snapshot(run_copy)
    code, out, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", "run.iterations=3", *FAST, "--resume")
    assert code == 0, err
    assert "Traceback" not in out + err and "weights_only=False" not in err
    assert f"dinov3nb train: warning: --resume skipped {newest}, which " in err and why in err, err
    assert f"dinov3nb train: resuming from {run_copy / 'checkpoint_0000002.pt'}" in err
    assert "dropped 1 unreadable line(s)" in err
    assert not (tmp_path / "payload-ran").exists()
    after = snapshot(run_copy)
    assert after["checkpoint_0000003.pt.unreadable"] == before["checkpoint_0000003.pt"]  # kept, byte for byte
    for name in ("checkpoint_0000001.pt", "checkpoint_0000002.pt"): assert after[name] == before[name]
    assert torch.load(newest, weights_only=True)["iteration"] == 3  # iteration 3 trained again from checkpoint 2
    assert [json.loads(l)["iteration"] for l in (run_copy / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_resume_with_no_readable_checkpoint_is_an_error(run_copy, capsys):
    for p in checkpoints(run_copy): p.write_bytes(p.read_bytes()[:1000])
    before = snapshot(run_copy)
    code, out, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={run_copy}", *FAST, "--resume")
    assert code == 2 and "dinov3nb train: error: --resume: none of the 3 checkpoints" in err and "Traceback" not in out + err
    assert err.count("warning: --resume skipped") == 3
    assert snapshot(run_copy) == before


# ---- the error policy: internal errors, --debug, Ctrl-C ---------------------------------------------------------------

def test_internal_error_is_short_and_points_to_debug(monkeypatch, tmp_path, capsys):
    from dinov3nb.train.trainer import Trainer
    def boom(self): raise RuntimeError("boom")
    monkeypatch.setattr(Trainer, "fit", boom)
    args = ["--config", "tiny_pretrain", f"run.output_dir={tmp_path / 'out'}", *FAST]
    code, out, err = train(capsys, *args)
    assert code == 70 and err.startswith("dinov3nb train: internal error: RuntimeError: boom") and "--debug" in err
    assert "Traceback" not in out + err
    code, out, err = train(capsys, *args, "--debug")
    assert code == 70 and "Traceback" in err and "RuntimeError: boom" in err


def test_debug_shows_the_traceback_of_expected_errors(tmp_path, capsys):
    code, out, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={tmp_path}", "run.max_to_keep=-1", "--debug")
    assert code == 2 and "Traceback" in err and "dinov3nb train: error: run.max_to_keep=-1" in err


def test_interrupt_exits_130(monkeypatch, tmp_path, capsys):
    from dinov3nb.train.trainer import Trainer
    def interrupted(self): raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "fit", interrupted)
    code, out, err = train(capsys, "--config", "tiny_pretrain", f"run.output_dir={tmp_path / 'out'}", *FAST)
    assert code == 130 and err == "dinov3nb train: interrupted\n"


# ---- multi-student runs: the parent holds only the students' folders, each one a run folder ---------------------------

def multi(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "tiny_multidistill", f"distill.teacher={teacher}", f"run.output_dir={out}", "run.iterations=1", *FAST, *extra]


def test_multidistill_parent_with_other_files_is_refused(earlier_run, hf_model, capsys):
    before = snapshot(hf_model)
    assert_error(*train(capsys, *multi(checkpoints(earlier_run)[-1], hf_model)),
                 "holds config.json, model.safetensors, preprocessor_config.json, besides the students' folders (narrow, wide)")
    assert snapshot(hf_model) == before


def test_multidistill_student_folder_of_another_run_is_refused(earlier_run, tmp_path, capsys):
    out = tmp_path / "multi"
    shutil.copytree(earlier_run, out / "wide")
    before = snapshot(out)
    assert_error(*train(capsys, *multi(checkpoints(earlier_run)[-1], out)), "multi/wide' already holds a training run")
    assert snapshot(out) == before


def test_multidistill_unreadable_teacher(earlier_run, tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(checkpoints(earlier_run)[-1].read_bytes()[:5000])
    assert_error(*train(capsys, *multi(teacher, tmp_path / "multi")), "distill.teacher=", "cannot be read: it is truncated")
    assert not (tmp_path / "multi").exists()


# ---- dinov3nb submit: the same checks before anything is queued -------------------------------------------------------

def test_submit_refuses_before_queueing(hf_model, tmp_path, capsys):
    from dinov3nb.train.submit import submit_main
    before = snapshot(hf_model)
    code = submit_main(["--local", "--gpus-per-node", "0", "--config", "tiny_pretrain", f"run.output_dir={hf_model}"])
    out, err = capsys.readouterr()
    assert_error(code, out, err, "did not write (config.json", prog="dinov3nb submit")
    assert snapshot(hf_model) == before and not (hf_model / "submitit").exists()
    (tmp_path / "bad.yaml").write_text("- 1\n")
    code = submit_main(["--local", "--config", str(tmp_path / "bad.yaml")])
    assert_error(code, *capsys.readouterr(), "holds a list at its top level", prog="dinov3nb submit")
    code = submit_main(["--local", "--config", "tiny_pretrain", "run.max_to_keep=-1"])
    assert_error(code, *capsys.readouterr(), "run.max_to_keep=-1", prog="dinov3nb submit")


def test_multidistill_resume_falls_back_for_every_student(earlier_run, tmp_path, capsys):
    "One student's newest checkpoint cut short: every student resumes from the newest iteration all of them can read."
    out = tmp_path / "multi"
    args = multi(checkpoints(earlier_run)[-1], out, "run.iterations=2", "run.checkpoint_period=1")
    assert train_main(args) == 0
    bad = out / "wide" / "checkpoint_0000002.pt"
    bad.write_bytes(bad.read_bytes()[:3000])
    before = snapshot(out)
    code, _, err = train(capsys, *args, "--resume")
    assert code == 0, err
    assert f"--resume skipped {bad}, which cannot be read: it is truncated or damaged" in err
    assert "resuming every student from iteration 1" in err
    after = snapshot(out)
    assert after["wide/checkpoint_0000002.pt.unreadable"] == before["wide/checkpoint_0000002.pt"]
    for name in ("narrow", "wide"):
        assert [json.loads(l)["iteration"] for l in (out / name / "metrics.jsonl").read_text().splitlines()] == [0, 1]
        assert torch.load(out / name / "checkpoint_0000002.pt", weights_only=True)["iteration"] == 2


def test_disk_full_while_saving(monkeypatch, tmp_path, capsys):
    "A checkpoint that cannot be written (a full disk) is an error that says so; no partial file stays behind."
    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"the first bytes")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    assert_error(*train(capsys, "--config", "tiny_pretrain", f"run.output_dir={out}", "run.iterations=1", *FAST),
                 "cannot write", "checkpoint_0000001.pt (PytorchStreamWriter failed writing file", "free some disk space")
    assert not list(out.glob(".checkpoint_*")) and checkpoints(out) == []
