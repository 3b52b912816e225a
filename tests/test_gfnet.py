"""Tests of GFNet's mathematics (seed 001, SPEC §2.3, §2.7): the global filter is a global circular
depthwise convolution (checked against an explicit sum and against a full-spectrum torch.fft.fft2
computation), the seed's filter shape 12 × 7 × 256, the FFT in fp32 under bf16 autocast, the two block
styles and filter initialisations, channels_last invariance and loading checkpoints of the old 4-D
``complex_weight`` layout."""

from __future__ import annotations

import math

import pytest
import torch

from imgcls.config import ModelConfig
from imgcls.errors import ConfigError
from imgcls.models.backbones.gfnet import GFBlock, GFNet, GlobalFilter
from imgcls.models.classifier import build_model, count_parameters


def circular_conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Explicit depthwise circular convolution of tokens ``x (B, H, W, C)`` with ``k (H, W, C)``:
    ``out[h, w] = Σ_ij x[i, j] k[(h - i) mod H, (w - j) mod W]``."""
    _, h, w, _ = x.shape
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            out += x[:, i : i + 1, j : j + 1, :] * torch.roll(k, shifts=(i, j), dims=(0, 1))[None]
    return out


@pytest.mark.parametrize(("h", "w"), [(4, 6), (5, 3)])
def test_global_filter_is_circular_convolution(h, w):
    torch.manual_seed(0)
    b, c = 2, 3
    x = torch.randn(b, h, w, c, dtype=torch.float64)
    kernel = torch.randn(h, w, c, dtype=torch.float64)
    gf = GlobalFilter(c, h, w)
    spectrum = torch.fft.rfft2(kernel, dim=(0, 1))  # the filter of a real spatial kernel
    assert tuple(spectrum.shape) == gf.filter_shape == (h, w // 2 + 1, c)
    with torch.no_grad():
        gf.weight_real.copy_(spectrum.real.float())
        gf.weight_imag.copy_(spectrum.imag.float())
    out = gf(x.float().reshape(b, h * w, c)).reshape(b, h, w, c).double()
    expected = circular_conv(x, kernel)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # the same through the full complex spectrum: ifft2(fft2(x) · fft2(k)), real part
    full = torch.fft.ifft2(
        torch.fft.fft2(x, dim=(1, 2)) * torch.fft.fft2(kernel, dim=(0, 1))[None], dim=(1, 2)
    )
    torch.testing.assert_close(out, full.real, atol=1e-4, rtol=1e-4)


def test_global_filter_matches_ortho_fft_formula_for_any_filter():
    """For an arbitrary learned filter K: out = irfft2(rfft2(x, ortho) · K, ortho) (norm factors cancel)."""
    torch.manual_seed(1)
    gf = GlobalFilter(4, 6, 6)
    x = torch.randn(3, 36, 4)
    k = torch.complex(gf.weight_real, gf.weight_imag).detach()
    grid = x.reshape(3, 6, 6, 4)
    unnormalised = torch.fft.irfft2(torch.fft.rfft2(grid, dim=(1, 2)) * k, s=(6, 6), dim=(1, 2))
    torch.testing.assert_close(gf(x), unnormalised.reshape(3, 36, 4), atol=1e-5, rtol=1e-5)


def test_seed_asl_filter_shape_and_parameter_count():
    model = GFNet(img_size=96, patch_size=8, in_chans=1, embed_dim=256, depth=8)
    f = model.blocks[0].filter
    assert model.grid == 12 and f.filter_shape == (12, 7, 256)  # H × (W/2+1) × C, not the seed's 7 × 7 × 256
    assert f.complex_filter().shape == (12, 7, 256) and f.complex_filter().dtype == torch.complex64
    assert f.weight_real.shape == f.weight_imag.shape == (12, 7, 256)
    clf = build_model(ModelConfig(backbone="gfnet", head="linear"), 28, 1)
    # patch 1·256·64+256, pos 144·256, 8 × (2 LN 1,024 + filter 2·12·7·256 + MLP 525,568), norm 512, head 256·28+28
    expected = 16_640 + 36_864 + 8 * (1_024 + 43_008 + 525_568) + 512 + 7_196
    assert count_parameters(clf) == expected == 4_618_012


def test_fft_runs_in_fp32_under_bf16_autocast(monkeypatch):
    seen = []
    rfft2 = torch.fft.rfft2

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return rfft2(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfft2", spy)
    torch.manual_seed(0)
    gf = GlobalFilter(8, 12, 12)  # 12 is not a power of two: a half-precision FFT would refuse it
    x = torch.randn(2, 144, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gf(x.bfloat16())
    assert seen == [torch.float32]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), gf(x.bfloat16().float()), atol=1e-2, rtol=1e-2)


def test_block_styles_follow_their_formulas_and_differ():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    outs = {}
    for style in ("seed", "original"):
        torch.manual_seed(1)
        block = GFBlock(8, 2.0, 0.0, 0.0, 4, 4, style, "seed").eval()
        with torch.no_grad():
            gf = block.filter(block.norm1(x))
            if style == "seed":  # x + GF(LN(x)), then + MLP(LN(·)): two residuals
                mid = x + gf
                expected = mid + block.mlp(block.norm2(mid))
            else:  # x + MLP(LN(GF(LN(x)))): one residual (Rao et al.)
                expected = x + block.mlp(block.norm2(gf))
            outs[style] = block(x)
        torch.testing.assert_close(outs[style], expected)
    assert not torch.allclose(outs["seed"], outs["original"], atol=1e-3)


@pytest.mark.parametrize(("init", "std"), [("seed", 1 / math.sqrt(256)), ("original", 0.02)])
def test_filter_init_scales(init, std):
    torch.manual_seed(0)
    f = GlobalFilter(256, 12, 12, init)
    for w in (f.weight_real, f.weight_imag):
        assert float(w.std()) == pytest.approx(std, rel=0.03)
        assert abs(float(w.mean())) < 0.1 * std


@pytest.mark.parametrize("style", ["seed", "original"])
@pytest.mark.parametrize("init", ["seed", "original"])
def test_every_style_and_init_runs_forward_and_backward(style, init):
    torch.manual_seed(0)
    model = GFNet(
        img_size=16, patch_size=4, embed_dim=16, depth=2, block_style=style, filter_init=init, drop_rate=0.0
    )
    out = model(torch.randn(3, 1, 16, 16))
    assert out.shape == (3, 16)
    out.pow(2).sum().backward()
    assert model.blocks[0].filter.weight_real.grad.abs().sum() > 0


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="block_style"):
        GFNet(img_size=16, patch_size=4, block_style="paper")
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        GFNet(img_size=18, patch_size=4)


def test_channels_last_conversion_leaves_outputs_unchanged():
    torch.manual_seed(0)
    model = GFNet(img_size=16, patch_size=4, embed_dim=16, depth=2).eval()
    x = torch.randn(2, 1, 16, 16)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert all(p.dim() != 4 or p is model.patch_embed.weight for p in model.parameters())
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), ref)


def test_old_complex_weight_checkpoints_still_load():
    torch.manual_seed(0)
    model = GFNet(img_size=16, patch_size=4, embed_dim=8, depth=1).eval()
    state = model.state_dict()
    old = dict(state)
    real, imag = old.pop("blocks.0.filter.weight_real"), old.pop("blocks.0.filter.weight_imag")
    old["blocks.0.filter.complex_weight"] = torch.stack([real, imag], dim=-1) * 2  # the pre-fix 4-D layout
    fresh = GFNet(img_size=16, patch_size=4, embed_dim=8, depth=1).eval()
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.blocks[0].filter.weight_real, real * 2)
    torch.testing.assert_close(fresh.blocks[0].filter.weight_imag, imag * 2)
