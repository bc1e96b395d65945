"""Parity of the heads and losses with the official implementation's outputs in ../shared/reference."""
import pytest
import torch
from safetensors.torch import load_file

from dinov3nb.testing import losses_reference_diffs
from dinov3nb.train.losses import DINOHead, dino_loss, gram_loss, ibot_loss_full, ibot_loss_masked, koleo_loss, sinkhorn_knopp

OUTPUTS = {"head.output", "head.output_no_last_layer", "dino.teacher_probs_sk", "dino.loss_sk",
           "dino.loss_sk_ignore_diag", "dino.center_after_update", "dino.teacher_probs_centered",
           "dino.loss_centered", "ibot.teacher_probs_sk", "ibot.loss_masked", "ibot.loss_full", "koleo.loss",
           "gram.loss_img_level", "gram.loss_batch_level", "gram.loss_keep_neg"}


def test_every_loss_output_matches_reference(reference_dir):
    diffs = losses_reference_diffs(reference_dir)  # raises if a stored tensor was neither used nor compared
    assert set(diffs) == OUTPUTS
    stored = set(load_file(reference_dir / "losses.safetensors"))
    inputs = {k for k in stored if k.startswith("head.state.")} | {
        "head.input", "dino.student_logits", "dino.teacher_logits", "ibot.masks", "ibot.student_masked_logits",
        "ibot.teacher_masked_logits", "ibot.student_full_logits", "ibot.teacher_full_probs", "koleo.features",
        "gram.student", "gram.teacher"}
    assert stored == OUTPUTS | inputs, sorted(stored ^ (OUTPUTS | inputs))  # every stored key accounted for
    bad = {k: v for k, v in diffs.items() if not v <= 1e-5}
    assert not bad, bad


def test_head_loads_official_keys_strictly(reference_dir):
    t = load_file(reference_dir / "losses.safetensors")
    state = {k[len("head.state."):]: v for k, v in t.items() if k.startswith("head.state.")}
    head = DINOHead(24, 32, nlayers=3, hidden_dim=40, bottleneck_dim=12)
    head.load_state_dict(state, strict=True)
    del state["last_layer.weight"]
    with pytest.raises(RuntimeError, match="last_layer"):
        head.load_state_dict(state, strict=True)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="does not match"):
        dino_loss(torch.randn(2, 3, 8), torch.softmax(torch.randn(2, 4, 8), -1))
    masks = torch.tensor([[True, False], [True, True]])
    with pytest.raises(ValueError, match="masked patches"):
        ibot_loss_masked(torch.randn(2, 8), torch.randn(3, 8), masks)
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="at most one"):
        gram_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 3), remove_neg=True, remove_only_teacher_neg=True)
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(4, 4, nlayers=0)


def test_ibot_forms_agree_and_sinkhorn_rows_are_distributions():
    torch.manual_seed(0)
    masks = torch.rand(4, 9) < 0.4
    s, t = torch.randn(4, 9, 16), torch.softmax(torch.randn(4, 9, 16), -1)
    torch.testing.assert_close(ibot_loss_masked(s[masks], t[masks], masks), ibot_loss_full(s, t, masks))
    p = sinkhorn_knopp(torch.randn(12, 16), 0.07)
    torch.testing.assert_close(p.sum(-1), torch.ones(12))
