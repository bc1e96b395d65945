"""A ViT works whether it is built or run inside `torch.inference_mode()` (the RoPE table cache)."""
import torch

from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig


def _vit():
    torch.manual_seed(0)
    return DinoVisionTransformer(ViTConfig.tiny(depth=2, n_storage_tokens=2)).eval()


def _reference(x):
    with torch.no_grad(): return _vit()(x)


def test_built_inside_inference_mode_runs_inside_and_outside():
    x, x2 = torch.randn(2, 3, 64, 64), torch.randn(1, 3, 48, 80)
    with torch.inference_mode(): m = _vit()
    with torch.inference_mode(): y_in = m(x)  # used to fail: "Inference tensors do not track version counter"
    # its parameters are inference tensors, so outside inference mode autograd must stay off
    with torch.no_grad(): y_out, y2_out = m(x), m(x2)
    assert torch.equal(y_in, _reference(x)) and torch.equal(y_out, _reference(x))
    assert torch.equal(y2_out, _reference(x2))
    assert all(not t.is_inference() for v in m.rope_embed._cache.values() for t in v)


def test_built_outside_runs_inside_then_outside_with_autograd():
    x = torch.randn(2, 3, 64, 64)
    m = _vit()
    with torch.inference_mode(): y_in = m(x)  # fills the RoPE cache inside inference mode
    assert all(not t.is_inference() for v in m.rope_embed._cache.values() for t in v)
    y_out = m(x)  # reuses the cached tables, with autograd on
    y_out.sum().backward()
    assert all(p.grad is not None for p in m.blocks[0].attn.qkv.parameters())
    ref = _reference(x)
    assert torch.equal(y_in, ref) and torch.allclose(y_out, ref, atol=1e-6)


def test_periods_reloaded_inside_inference_mode_refresh_the_cache():
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        m = _vit(); y = m(x)
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        sd["rope_embed.periods"] = 2 * sd["rope_embed.periods"]
        m.load_state_dict(sd)  # in-place copy into an inference tensor: no version bump, the cache is emptied
        assert not torch.equal(m(x), y)
