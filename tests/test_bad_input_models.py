"""Bad input and faults in checkpoint reading and writing (issue 14): every case ends in a `CheckpointError` (or a
`ValueError` for a bad argument) whose message names the problem, never in a traceback of another type, a silent
wrong result, code run from a file, or a changed pre-existing file."""
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dinov3nb
from dinov3nb.cli import main
from dinov3nb.models.checkpoints import (CheckpointMismatchError, NonFiniteWeightsWarning, load, load_weights_into,
                                         read_state_dict, save, save_hf, to_timm_state_dict)
from dinov3nb.models.convert import CheckpointError, CheckpointFormatError
from dinov3nb.models.convnext import ConvNeXt, ConvNeXtConfig
from dinov3nb.models.safety import CheckpointReadError, UnsafeCheckpointError, pickle_globals, safe_torch_load
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig

POSIX_SYSTEM = f"{os.system.__module__}.system"  # what `os.system` pickles as: `posix.system` on Linux


def randomize(model:torch.nn.Module, seed:int=0) -> torch.nn.Module:
    "Random values in every parameter, so norms, LayerScale and biases all matter."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def tiny(family:str, seed:int=0, **kw) -> torch.nn.Module:
    "A tiny random ViT or ConvNeXt."
    return randomize(DinoVisionTransformer(ViTConfig.tiny(**kw)) if family == "vit" else ConvNeXt(ConvNeXtConfig.tiny(**kw)), seed)


def outputs(model:torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): o = model.forward_features(x)
    return {k: v for k, v in o.items() if k in ("x_norm_clstoken", "x_norm_patchtokens")}


def assert_same_outputs(a:torch.nn.Module, b:torch.nn.Module):
    oa, ob = outputs(a), outputs(b)
    for k in oa: torch.testing.assert_close(ob[k], oa[k], rtol=0, atol=1e-6)


def snapshot(folder:Path) -> dict[str, bytes]:
    "Every file under `folder` with its bytes: compare before and after a failing call."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write(model:torch.nn.Module, path:Path, fmt:str) -> Path:
    "Write `model` the way `dinov3nb convert --to fmt` does."
    if fmt == "safetensors": return save(model, path)
    if fmt == "hf": return save_hf(model, path)
    save_file(to_timm_state_dict(model), str(path))
    return path


# ---------------------------------------------------------------- 1. round trips through every format convert writes

FORMATS = [("safetensors", "m.safetensors"), ("hf", "m_hf"), ("timm", "m_timm.safetensors")]


def tiny_for(family:str, fmt:str) -> torch.nn.Module:
    "A tiny model `fmt` can hold: timm's layout has no head count, its readers assume heads of width 64 as released."
    return tiny(family, num_heads=1) if (family, fmt) == ("vit", "timm") else tiny(family)


@pytest.mark.parametrize("family", ["vit", "convnext"])
@pytest.mark.parametrize("fmt, name", FORMATS, ids=[f for f, _ in FORMATS])
def test_round_trip_api(tmp_path, family, fmt, name):
    model = tiny_for(family, fmt)
    back = load(write(model, tmp_path / name, fmt))
    assert type(back) is type(model)
    assert_same_outputs(model, back)


@pytest.mark.parametrize("family", ["vit", "convnext"])
@pytest.mark.parametrize("fmt, name", FORMATS, ids=[f for f, _ in FORMATS])
def test_round_trip_cli(tmp_path, capsys, family, fmt, name):
    model = tiny_for(family, fmt)
    torch.save(model.state_dict(), tmp_path / "src.pth")
    assert main(["convert", str(tmp_path / "src.pth"), str(tmp_path / name), "--to", fmt]) == 0, capsys.readouterr().err
    assert_same_outputs(model, dinov3nb.load(tmp_path / name))


def test_convnext_safetensors_keeps_every_official_key(tmp_path):
    model = tiny("convnext")
    keys = set(load_file(save(model, tmp_path / "c.safetensors")))
    assert keys == set(model.state_dict()) and {"norms.3.weight", "norms.3.bias"} <= keys


def test_convnext_written_without_norms3_still_loads(tmp_path):
    model = tiny("convnext")  # what the earlier `save` wrote: `norms.3.*` dropped as a tied tensor
    save_file({k: v.clone() for k, v in model.state_dict().items() if not k.startswith("norms.3.")}, str(tmp_path / "old.safetensors"))
    assert_same_outputs(model, load(tmp_path / "old.safetensors"))


UNSUPPORTED = {  # what a format cannot hold: (config, target format, message fragment)
    "cls-norm-to-hf": (dict(untie_cls_and_patch_norms=True), "hf", "cls_norm"),  # no separate cls_norm in HF or timm
    "cls-norm-to-timm": (dict(untie_cls_and_patch_norms=True, num_heads=1), "timm", "cls_norm"),
    "head-width-32-to-timm": (dict(), "timm", "heads of width 32"),  # timm's layout stores no head count
}


@pytest.mark.parametrize("kw, fmt, fragment", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_conversion_writes_nothing(tmp_path, capsys, kw, fmt, fragment):
    model = tiny("vit", **kw)
    with pytest.raises(CheckpointFormatError, match=fragment):
        write(model, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists()
    torch.save(model.state_dict(), tmp_path / "src.pth")
    (tmp_path / "existing").write_bytes(b"keep me")
    before = snapshot(tmp_path)
    assert main(["convert", str(tmp_path / "src.pth"), str(tmp_path / "new"), "--to", fmt]) == 2
    assert main(["convert", str(tmp_path / "src.pth"), str(tmp_path / "existing"), "--to", fmt]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_failed_save_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = save(tiny("vit"), tmp_path / "m.safetensors")
    before = snapshot(tmp_path)
    import safetensors.torch
    def broken(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save(tiny("vit", embed_dim=96, num_heads=3), path)
    assert snapshot(tmp_path) == before  # neither the file nor a temporary file changed


# ---------------------------------------------------------------- 2. which=

def _wrap(model:torch.nn.Module) -> dict:
    "A backbone's tensors as a training checkpoint stores them, next to a head."
    return {f"backbone.{k}": v for k, v in model.state_dict().items()} | {"dino_head.w": torch.ones(3)}


@pytest.fixture
def training_checkpoint(tmp_path):
    student, teacher = tiny("vit", seed=0), tiny("vit", seed=1)
    torch.save({"student": _wrap(student), "teacher": _wrap(teacher), "gram_teacher": {}, "iteration": 5}, tmp_path / "t.pth")
    return tmp_path / "t.pth", student, teacher


@pytest.mark.parametrize("call", [load, read_state_dict, lambda p, which: load_weights_into(tiny("vit"), p, which=which)],
                         ids=["load", "read_state_dict", "load_weights_into"])
def test_which_typo_is_an_error(training_checkpoint, call):
    path, _, _ = training_checkpoint
    with pytest.raises(ValueError, match=r"'teacher', 'student', 'gram_teacher'.*did you mean 'student'"):
        call(path, which="studnet")


def test_which_is_checked_before_the_file_is_read(tmp_path):
    with pytest.raises(ValueError, match="which='x'"):
        load(tmp_path / "missing.pth", which="x")


def test_which_picks_the_backbone(training_checkpoint):
    path, student, teacher = training_checkpoint
    assert_same_outputs(student, load(path, which="student"))
    assert_same_outputs(teacher, load(path))


@pytest.mark.parametrize("parts, which, holds", [
    (("student", "teacher"), "gram_teacher", "'teacher' and 'student'"),  # a run without Gram anchoring: gram_teacher is {}
    (("teacher",), "student", "'teacher'"),
], ids=["no-gram-teacher", "teacher-only"])
def test_training_checkpoint_without_the_asked_backbone(tmp_path, parts, which, holds):
    content = {"student": {}, "teacher": {}, "gram_teacher": {}} | {p: _wrap(tiny("vit")) for p in parts}
    torch.save(content, tmp_path / "t.pth")
    with pytest.raises(CheckpointFormatError, match=f"without a '{which}' backbone; it holds {holds}"):
        load(tmp_path / "t.pth", which=which)


# ---------------------------------------------------------------- 3. NaN / Inf weights

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_warn(tmp_path, bad):
    model = tiny("vit")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["blocks.1.attn.proj.weight"][0, :3] = bad
    sd["cls_token"][..., 0] = bad
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.warns(NonFiniteWeightsWarning, match=r"4 non-finite values \(NaN or Inf\) in 2 tensors: .*cls_token \(1 of 64\)"):
        load(tmp_path / "bad.pth")
    with pytest.warns(NonFiniteWeightsWarning, match=r"blocks\.1\.attn\.proj\.weight \(3 of 4096\)"):
        load_weights_into(tiny("vit"), tmp_path / "bad.pth")


def test_finite_weights_do_not_warn(tmp_path):
    torch.save(tiny("vit").state_dict(), tmp_path / "ok.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWeightsWarning)
        load(tmp_path / "ok.pth")


# ---------------------------------------------------------------- 4. unsafe pickles

class Payload:
    "Unpickling this runs a shell command that creates `marker`."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def _torch_zip(path, marker): torch.save({"w": torch.ones(2), "x": Payload(marker)}, path)
def _torch_legacy(path, marker): torch.save({"x": Payload(marker)}, path, _use_new_zipfile_serialization=False)
def _plain(protocol): return lambda path, marker: path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=protocol))
def _hf_bin(path, marker):
    path.mkdir(); (path / "config.json").write_text("{}")
    torch.save({"x": Payload(marker)}, path / "pytorch_model.bin")


UNSAFE = {"torch-zip": ("e.pth", _torch_zip), "torch-legacy": ("e.pth", _torch_legacy), "pickle-p0": ("e.pkl", _plain(0)),
          "pickle-p2": ("e.pt", _plain(2)), "pickle-p4": ("e.bin", _plain(4)), "pickle-p5": ("e.pth", _plain(5)),
          "hf-folder-bin": ("hf", _hf_bin)}


@pytest.mark.parametrize("name, make", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_pickle_is_refused_and_never_run(tmp_path, name, make):
    marker = tmp_path / "pwned"
    make(tmp_path / name, marker)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load(tmp_path / name)
    msg = str(err.value)
    assert POSIX_SYSTEM in msg and "was not loaded" in msg and "weights_only=False" in msg and "trust its author" in msg
    assert "will likely succeed" not in msg and "truncated" not in msg
    assert not marker.exists() and snapshot(tmp_path) == before


def _sharded(folder:Path, student, teacher) -> Path:
    "A sharded training checkpoint folder as an FSDP2 run writes it (one process here)."
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "torch.distributed is disabled ...: assuming a single process"
        dcp.save({"student": _wrap(student), "teacher": _wrap(teacher), "gram_teacher": {}}, checkpoint_id=folder, no_dist=True)
    torch.save({"iteration": 3, "optimizer_param_groups": []}, folder / "trainer_state.pt")
    torch.save({"torch": torch.get_rng_state()}, folder / "rng_rank0.pt")
    return folder


def test_sharded_checkpoint_metadata_is_scanned(tmp_path):
    student, teacher = tiny("vit", seed=0), tiny("vit", seed=1)
    folder = _sharded(tmp_path / "ck", student, teacher)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # DCP's own deprecation notices
        assert_same_outputs(student, load(folder, which="student"))
        with pytest.raises(ValueError, match="did you mean 'gram_teacher'"):
            load(folder, which="gram-teacher")
        (folder / ".metadata").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))  # DCP reads it with pickle.load
        before = snapshot(tmp_path)
        with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: it is a pickle that imports " + POSIX_SYSTEM):
            load(folder)
    assert not (tmp_path / "pwned").exists() and snapshot(tmp_path) == before


def test_stack_global_through_the_memo_is_resolved():
    import io
    data = pickle.dumps([os.getcwd, os.system], protocol=4)  # the second module string comes back with BINGET
    assert list(pickle_globals(io.BytesIO(data))) == [f"{os.getcwd.__module__}.getcwd", POSIX_SYSTEM]


def test_unresolvable_stack_global_counts_as_unsafe(tmp_path):
    # SHORT_BINUNICODE 'posix', SHORT_BINUNICODE 'system', DUP, STACK_GLOBAL, EMPTY_TUPLE, REDUCE, STOP
    (tmp_path / "dup.pkl").write_bytes(b"\x80\x04\x8c\x05posix\x8c\x06system2\x93)R.")
    with pytest.raises(UnsafeCheckpointError, match=r"imports \?"):
        load(tmp_path / "dup.pkl")


def test_torch_advice_is_scrubbed_from_passed_through_errors(tmp_path, monkeypatch):
    torch.save(tiny("vit").state_dict(), tmp_path / "ok.pth")
    def refuse(*a, **k):
        raise pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
                                     "will likely succeed, but it can result in arbitrary code execution. Do it only if you "
                                     "got the file from a trusted source.\nPlease file an issue with the following so that we "
                                     "can make `weights_only=True` compatible with your use case: WeightsUnpickler error: "
                                     "Unsupported operand 149\n\nCheck the documentation of torch.load to learn more")
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointReadError) as err:
        load(tmp_path / "ok.pth")
    msg = str(err.value)
    assert "Unsupported operand 149" in msg and str(tmp_path / "ok.pth") in msg
    assert "likely succeed" not in msg and "weights_only" not in msg


def _zip_without(src:Path, dst:Path, drop:str):
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            if not info.filename.endswith(drop): zo.writestr(info, zi.read(info.filename))


@pytest.mark.parametrize("damage", ["truncated-zip", "missing-record", "truncated-legacy", "flipped-pickle"])
def test_damaged_torch_files_are_read_errors(tmp_path, damage):
    sd = tiny("vit").state_dict()
    torch.save(sd, tmp_path / "ok.pth"); torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    path = tmp_path / "bad.pth"
    if damage == "truncated-zip": path.write_bytes((tmp_path / "ok.pth").read_bytes()[:5000])
    elif damage == "missing-record": _zip_without(tmp_path / "ok.pth", path, "/data/0")  # torch: KeyError / RuntimeError
    elif damage == "truncated-legacy": path.write_bytes((tmp_path / "legacy.pth").read_bytes()[:3000])  # EOFError
    else:
        with zipfile.ZipFile(tmp_path / "ok.pth") as zi, zipfile.ZipFile(path, "w") as zo:
            for info in zi.infolist():
                data = zi.read(info.filename)
                zo.writestr(info, b"\xff" + data[1:] if info.filename.endswith("data.pkl") else data)
    with pytest.raises(CheckpointReadError, match="truncated or corrupted") as err:
        load(path)
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)


# ---------------------------------------------------------------- 5. other file faults

def _hf_vit(folder:Path, config) -> Path:
    "A Hugging Face ViT folder whose config.json is replaced by `config`."
    save_hf(tiny("vit"), folder)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def _bytes(name:str, data:bytes|str):
    "A maker of a file `name` holding `data`."
    def make(folder:Path) -> Path:
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
        return folder / name
    return make


def _saved(name:str, obj):
    "A maker of a `torch.save` file `name` holding `obj` (called, if it is a function)."
    def make(folder:Path) -> Path:
        torch.save(obj() if callable(obj) else obj, folder / name)
        return folder / name
    return make


def _folder(name:str, files:dict[str, str]):
    "A maker of a folder `name` holding text `files`."
    def make(folder:Path) -> Path:
        (folder / name).mkdir()
        for f, text in files.items(): (folder / name / f).write_text(text)
        return folder / name
    return make


def _bad_metadata(folder:Path) -> Path:
    save_file(tiny("vit").state_dict(), str(folder / "m.safetensors"), metadata={"dinov3nb.config": '{"family": "vit", "depth": "two"'})
    return folder / "m.safetensors"


VIT_SIZES = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}
FAULTS = {  # name: (make(folder) -> path, error class, message fragment)
    "hf-config-empty-object": (lambda t: _hf_vit(t / "hf", {}), CheckpointFormatError, "no valid hidden_size"),
    "hf-config-json-list": (lambda t: _hf_vit(t / "hf", [1, 2]), CheckpointFormatError, "holds an array, not an object"),
    "hf-config-invalid-json": (lambda t: _hf_vit(t / "hf", "{'hidden_size': 64"), CheckpointReadError, "is not valid JSON (line 1"),
    "hf-config-wrong-types": (lambda t: _hf_vit(t / "hf", {"hidden_size": "64", **VIT_SIZES}), CheckpointFormatError,
                              "no valid hidden_size"),
    "hf-folder-without-weights": (_folder("hf", {"config.json": "{}"}), CheckpointReadError, "no model.safetensors"),
    "hf-weights-without-config": (lambda t: _hf_vit(t / "hf", "{}") / "model.safetensors", CheckpointFormatError,
                                  "without their config.json"),
    "empty-pth": (_bytes("e.pth", b""), CheckpointReadError, "is empty (0 bytes)"),
    "empty-safetensors": (_bytes("e.safetensors", b""), CheckpointReadError, "is empty (0 bytes)"),
    "random-bytes-pth": (_bytes("r.pth", bytes(range(256)) * 16), CheckpointReadError, "not a PyTorch checkpoint or safetensors file"),
    "random-bytes-safetensors": (_bytes("r.safetensors", b"\x10" + bytes(range(256)) * 16), CheckpointReadError,
                                 "not a readable safetensors file"),
    "text-file": (_bytes("notes.pth", "these are not weights\n"), CheckpointReadError, "not a PyTorch checkpoint"),
    "pth-list": (_saved("l.pth", [torch.ones(2)]), CheckpointFormatError, "holds a list, not a state dict"),
    "pth-bare-tensor": (_saved("x.pth", torch.ones(3, 4)), CheckpointFormatError, "single tensor of shape [3, 4]"),
    "pth-dict-without-tensors": (_saved("d.pth", {"lr": 0.1, "epoch": 3}), CheckpointFormatError, "dict without tensors"),
    "unknown-layout": (_saved("u.pth", {"encoder.weight": torch.ones(2)}), CheckpointFormatError, "unrecognised checkpoint layout"),
    "incomplete-convnext": (_saved("c.pth", lambda: {k: v for k, v in tiny("convnext").state_dict().items()
                                                     if k != "downsample_layers.2.1.weight"}),
                            CheckpointFormatError, "lacks the tensor 'downsample_layers.2.1.weight'"),
    "plain-pickle": (_bytes("p.pkl", pickle.dumps({"w": [1.0]})), CheckpointFormatError, "plain Python pickle"),
    "bad-config-metadata": (_bad_metadata, CheckpointFormatError, "dinov3nb.config metadata is not a valid model config"),
    "folder-not-a-checkpoint": (_folder("photos", {"a.jpg": "x"}), CheckpointFormatError, "is a folder but not a checkpoint"),
    "missing-path": (lambda t: t / "nowhere" / "model.pth", CheckpointReadError, "no checkpoint at"),
}


@pytest.mark.parametrize("make, cls, fragment", FAULTS.values(), ids=FAULTS.keys())
def test_file_faults(tmp_path, make, cls, fragment):
    path = make(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(cls) as err:
        load(path)
    msg = str(err.value)
    assert fragment in msg, msg
    assert "\n" not in msg and "Traceback" not in msg
    assert snapshot(tmp_path) == before


def test_permission_denied(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(tiny("vit").state_dict(), path)
    path.chmod(0)
    try:
        try:
            with open(path, "rb"): pass
            pytest.skip("running as root: chmod 000 does not stop reading")
        except PermissionError: pass
        with pytest.raises(CheckpointReadError, match="permission denied"):
            load(path)
    finally: path.chmod(0o644)


def test_mismatch_names_the_matching_loader(tmp_path):
    torch.save(tiny("vit", embed_dim=96, num_heads=3).state_dict(), tmp_path / "big.pth")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches.*dinov3nb\.load"):
        load_weights_into(tiny("vit"), tmp_path / "big.pth")


def test_every_error_is_a_value_error():
    for cls in (CheckpointReadError, UnsafeCheckpointError, CheckpointFormatError, CheckpointMismatchError):
        assert issubclass(cls, CheckpointError) and issubclass(cls, ValueError)


# ---------------------------------------------------------------- 6. the command line's view

def _missing_record(folder:Path) -> Path:
    torch.save(tiny("vit").state_dict(), folder / "ok.pth")
    _zip_without(folder / "ok.pth", folder / "bad.pth", "/data/0")
    return folder / "bad.pth"


def _unsafe(folder:Path) -> Path:
    _plain(2)(folder / "e.pth", folder / "pwned")
    return folder / "e.pth"


CLI_CASES = {
    "unsafe-pickle": (_unsafe, "was not loaded"),
    "empty-file": (_bytes("e.pth", b""), "is empty"),
    "missing-path": (lambda t: t / "missing.pth", "no checkpoint at"),
    "hf-config-empty-object": (lambda t: _hf_vit(t / "hf", {}), "no valid hidden_size"),
    "random-bytes": (_bytes("r.pth", bytes(range(256)) * 8), "not a PyTorch checkpoint"),
    "missing-record": (_missing_record, "truncated or corrupted"),
}


@pytest.mark.parametrize("make, fragment", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_cli_info_reports_one_line(tmp_path, capsys, make, fragment):
    path = make(tmp_path)
    before = snapshot(tmp_path)
    rc = main(["info", str(path)])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc != 0 and len(lines) == 1 and "error:" in lines[0] and fragment in lines[0], err
    assert "Traceback" not in err and "will likely succeed" not in err
    assert not (tmp_path / "pwned").exists() and snapshot(tmp_path) == before


def test_cli_convert_of_an_unsafe_file_writes_nothing(tmp_path, capsys):
    _unsafe(tmp_path)
    (tmp_path / "out.safetensors").write_bytes(b"earlier output")
    before = snapshot(tmp_path)
    assert main(["convert", str(tmp_path / "e.pth"), str(tmp_path / "out.safetensors")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and snapshot(tmp_path) == before


def test_safe_torch_load_reads_what_torch_save_writes(tmp_path):
    state = {"teacher": tiny("vit").state_dict(), "iteration": 3, "lr": [1e-3, 2e-3], "betas": (0.9, 0.99),
             "p": torch.nn.Parameter(torch.ones(2)), "bf16": torch.ones(2, dtype=torch.bfloat16), "device": torch.device("cpu")}
    torch.save(state, tmp_path / "train.pt")
    assert set(safe_torch_load(tmp_path / "train.pt")) == set(state)
