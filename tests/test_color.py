"""Chroma restoration (j4r.color.fill_chroma): what rain greys gets its colour back, and
nothing else is touched."""

import torch

from j4r.color import (
    CHROMA_FILL_ALIGN,
    CHROMA_FILL_REACH,
    fill_chroma,
    rgb_to_ycbcr,
    with_luma,
)
from j4r.config import net_config
from j4r.model import build_model, derain_rgb_step


def two_colour_picture(h: int = 64, w: int = 96) -> torch.Tensor:
    """A reddish left half and a greenish right half, of about the same saturation, with a
    gentle vertical shading so the luma is not flat. RGB ``(1, 3, h, w)``."""
    rgb = torch.empty(1, 3, h, w)
    shade = torch.linspace(0.85, 1.0, h).view(h, 1)
    rgb[0, :, :, : w // 2] = torch.tensor([0.75, 0.30, 0.25]).view(3, 1, 1) * shade
    rgb[0, :, :, w // 2 :] = torch.tensor([0.30, 0.65, 0.30]).view(3, 1, 1) * shade
    return rgb


def chroma_error(ycbcr: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((ycbcr[:, 1:] - reference[:, 1:]).abs() * mask).sum() / mask.sum() / 2)


def with_grey_drop(clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An opaque near-neutral drop (α = 1) of radius 6 over the red half: (rainy, drop mask)."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(96), indexing="ij")
    drop = ((yy - 32) ** 2 + (xx - 22) ** 2 <= 6**2).float().view(1, 1, 64, 96)
    return (1 - drop) * clean + drop * 0.85, drop


def test_a_grey_drop_gets_the_colour_around_it_back():
    """With the luma under an opaque drop restored, the pass-through leaves a grey blot, the
    fill gives it the red of its surroundings; pixels whose luma did not change keep theirs."""
    clean = two_colour_picture()
    rainy, drop = with_grey_drop(clean)
    clean_ycbcr, rainy_ycbcr = rgb_to_ycbcr(clean), rgb_to_ycbcr(rainy)
    restored_luma = clean_ycbcr[:, :1]  # as if the network had restored the luma perfectly
    passed = torch.cat([restored_luma, rainy_ycbcr[:, 1:]], dim=1)
    filled = fill_chroma(rainy_ycbcr, restored_luma)
    assert torch.equal(filled[:, :1], restored_luma)
    before, after = chroma_error(passed, clean_ycbcr, drop), chroma_error(filled, clean_ycbcr, drop)
    assert before > 0.1 and after < 0.1 * before, (before, after)
    outside = 1 - drop
    assert torch.equal(filled[:, 1:] * outside, rainy_ycbcr[:, 1:] * outside)


def test_a_white_pole_the_network_dimmed_is_not_painted():
    """A neutral pole over the red half whose luma the network changed by mistake (dimmed, still
    far brighter than the red around it): its colour is not the rain's doing, so it stays
    grey instead of taking the red of its neighbours."""
    clean = two_colour_picture()
    clean[..., 10:20] = 0.95
    ycbcr = rgb_to_ycbcr(clean)
    luma = ycbcr[:, :1].clone()
    luma[..., 10:20] -= 0.15
    filled = fill_chroma(ycbcr, luma)
    pole = filled[:, 1:, :, 12:18] - 0.5
    assert float(pole.abs().max()) < 0.01, float(pole.abs().max())


def test_unchanged_luma_leaves_everything_bit_for_bit():
    rgb = two_colour_picture()
    ycbcr = rgb_to_ycbcr(rgb)
    assert torch.equal(fill_chroma(ycbcr, ycbcr[:, :1]), ycbcr)
    assert torch.equal(
        with_luma(ycbcr, ycbcr[:, :1], chroma_fill=True), with_luma(ycbcr, ycbcr[:, :1])
    )


def test_chroma_the_rain_kept_is_not_blurred():
    """A neutral streak added across the colour boundary leaves chroma as it was (added light
    does not change CbCr); the fill must not swap it for a blend of both sides, which is less
    colourful than either (the shading makes some rows' neighbours a little more colourful:
    within a quarter of an 8-bit step)."""
    clean = two_colour_picture()
    rainy = clean.clone()
    rainy[..., 20:23, 10:86] += 0.15  # unclipped, neutral
    ycbcr = rgb_to_ycbcr(rainy)
    filled = fill_chroma(ycbcr, rgb_to_ycbcr(clean)[:, :1])
    torch.testing.assert_close(filled[:, 1:], ycbcr[:, 1:], rtol=0, atol=1e-3)


def test_a_band_with_its_reach_matches_the_whole_frame():
    """The tiled path restores chroma band by band; a band starting on a multiple of
    CHROMA_FILL_ALIGN rows with CHROMA_FILL_REACH rows more on each side comes out as the same
    rows of the whole frame; with too few rows around it, it does not."""
    generator = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 3, 300, 80, generator=generator)
    ycbcr = rgb_to_ycbcr(rgb)
    luma = ycbcr[:, :1] + 0.05 * torch.rand(1, 1, 300, 80, generator=generator)
    luma[..., 120:190, :] += 0.3  # no trusted pixel near: only the widest neighbourhood reaches
    luma = luma.clamp(0, 1)
    whole = fill_chroma(ycbcr, luma)
    top, rows = 131, 40

    def band(lo: int, hi: int) -> torch.Tensor:
        out = fill_chroma(ycbcr[..., lo:hi, :], luma[..., lo:hi, :])
        return out[..., top - lo : top - lo + rows, :]

    lo = (top - CHROMA_FILL_REACH) // CHROMA_FILL_ALIGN * CHROMA_FILL_ALIGN
    expected = whole[..., top : top + rows, :]
    torch.testing.assert_close(
        band(lo, top + rows + CHROMA_FILL_REACH), expected, rtol=0, atol=1e-5
    )
    assert not torch.allclose(band(top - 12, top + rows + 12), expected, atol=1e-5)


def test_the_network_config_switches_it_and_luma_is_the_same_either_way():
    torch.manual_seed(0)
    plain = build_model(net_config("tiny"))
    filling = build_model(net_config("tiny", chroma_fill=True))
    filling.load_state_dict(plain.state_dict())
    rgb = with_grey_drop(two_colour_picture())[0]
    out_plain, raw_plain, _ = derain_rgb_step(plain.eval(), rgb, None)
    out_fill, raw_fill, _ = derain_rgb_step(filling.eval(), rgb, None)
    assert torch.equal(raw_fill.background, raw_plain.background)
    expected = fill_chroma(rgb_to_ycbcr(rgb), raw_plain.background.clamp(0, 1))
    torch.testing.assert_close(rgb_to_ycbcr(out_fill), expected, rtol=0, atol=1e-2)  # RGB clamp
    assert not torch.equal(out_fill, out_plain)


def test_a_small_change_of_the_luma_moves_the_colour_a_little():
    """The fill is smooth in its input: an output luma one 8-bit level off (the next frame, a
    segment's warm-up) moves no chroma by more than a level or two. The hard case: tinted
    streaks as colourful as the scene behind them, where a hard "more colourful" switch flips
    between the streak's hue and the scene's (measured: jumps of up to 20 levels)."""
    generator = torch.Generator().manual_seed(1)
    h, w = 48, 64
    ycbcr = torch.empty(1, 3, h, w)
    ycbcr[:, 0] = 0.5
    ycbcr[:, 1] = 0.5 + 0.1 + 0.004 * torch.randn(h, w, generator=generator)  # a blue-ish scene
    ycbcr[:, 2] = 0.5
    streaks = torch.rand(h, w, generator=generator) < 0.3
    ycbcr[:, 0][:, streaks] = 0.7  # brighter, and tinted red: another hue, as colourful
    ycbcr[:, 1][:, streaks] = 0.5
    ycbcr[:, 2][:, streaks] = 0.6
    luma = torch.full((1, 1, h, w), 0.5)  # the network restored the scene's luma
    nudge = torch.randint(-1, 2, luma.shape, generator=generator) / 255
    a = fill_chroma(ycbcr, luma)
    b = fill_chroma(ycbcr, luma + nudge)
    assert float((a[:, 1:] - b[:, 1:]).abs().max()) * 255 < 2.5
