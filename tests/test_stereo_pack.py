"""Packing layouts: sizes for every format (odd sizes too), eye placement, squeezing and anaglyph colour math."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_spot.models import AnaglyphMethod, OutputFormat
from stereo_spot.stereo.pack import (
    DUBOIS_LEFT,
    DUBOIS_RIGHT,
    linear_to_srgb,
    output_size,
    pack,
    pack_uint8,
    srgb_to_linear,
)

SIZES = [(160, 96), (161, 97), (1, 1), (3, 2)]


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_packed_size_matches_output_size(fmt: OutputFormat, width: int, height: int) -> None:
    left = torch.rand(2, 3, height, width)
    right = torch.rand(2, 3, height, width)
    packed = pack(left, right, fmt)
    out_w, out_h = output_size(width, height, fmt)
    assert packed.shape == (2, 3, out_h, out_w)
    u8 = (left * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    assert pack_uint8(u8, left, right.clone(), fmt).shape == (2, out_h, out_w, 3)


def test_output_sizes() -> None:
    assert output_size(1280, 720, OutputFormat.SBS) == (2560, 720)
    assert output_size(1280, 720, OutputFormat.HSBS) == (1280, 720)
    assert output_size(1280, 720, OutputFormat.TB) == (1280, 1440)
    assert output_size(1280, 720, OutputFormat.HTB) == (1280, 720)
    assert output_size(1280, 720, OutputFormat.ANAGLYPH) == (1280, 720)
    # odd sizes: both eyes keep the same size, so a half layout is one pixel larger
    assert output_size(161, 97, OutputFormat.HSBS) == (162, 97)
    assert output_size(161, 97, OutputFormat.HTB) == (161, 98)
    with pytest.raises(ValueError):
        output_size(0, 10, OutputFormat.SBS)


def test_full_layouts_place_left_then_right() -> None:
    left, right = torch.zeros(1, 3, 4, 6), torch.ones(1, 3, 4, 6)
    sbs = pack(left, right, OutputFormat.SBS)
    assert sbs[..., :6].max() == 0 and sbs[..., 6:].min() == 1
    tb = pack(left, right, OutputFormat.TB)
    assert tb[..., :4, :].max() == 0 and tb[..., 4:, :].min() == 1


def test_half_layouts_average_pixel_pairs() -> None:
    left = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8).expand(1, 3, 2, 8).contiguous()
    hsbs = pack(left, left, OutputFormat.HSBS)
    np.testing.assert_allclose(hsbs[0, 0, 0].numpy(), [0.5, 2.5, 4.5, 6.5] * 2)
    tall = left.transpose(2, 3).contiguous()  # 8 rows
    htb = pack(tall, tall, OutputFormat.HTB)
    np.testing.assert_allclose(htb[0, 0, :, 0].numpy(), [0.5, 2.5, 4.5, 6.5] * 2)


def test_half_layout_of_an_odd_width_keeps_the_mean() -> None:
    left = torch.rand(1, 3, 5, 7)
    hsbs = pack(left, left, OutputFormat.HSBS)
    assert hsbs.shape[-1] == 8
    np.testing.assert_allclose(hsbs[..., :4].mean().item(), left.mean().item(), rtol=0.05)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    left = torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1)
    right = torch.tensor([0.3, 0.6, 0.8]).view(1, 3, 1, 1)
    return left, right


def test_color_anaglyph_takes_red_from_left_and_cyan_from_right() -> None:
    left, right = _pair()
    out = pack(left, right, OutputFormat.ANAGLYPH, AnaglyphMethod.COLOR).flatten().tolist()
    np.testing.assert_allclose(out, [0.9, 0.6, 0.8], atol=1e-6)


def test_half_color_and_gray_anaglyphs_use_luma() -> None:
    left, right = _pair()
    luma_l = 0.299 * 0.9 + 0.587 * 0.2 + 0.114 * 0.1
    luma_r = 0.299 * 0.3 + 0.587 * 0.6 + 0.114 * 0.8
    half = pack(left, right, OutputFormat.ANAGLYPH, AnaglyphMethod.HALF_COLOR).flatten().tolist()
    np.testing.assert_allclose(half, [luma_l, 0.6, 0.8], atol=1e-6)
    gray = pack(left, right, OutputFormat.ANAGLYPH, AnaglyphMethod.GRAY).flatten().tolist()
    np.testing.assert_allclose(gray, [luma_l, luma_r, luma_r], atol=1e-6)


def test_dubois_anaglyph_applies_the_matrices_in_linear_light() -> None:
    left, right = _pair()
    out = pack(left, right, OutputFormat.ANAGLYPH, AnaglyphMethod.DUBOIS).flatten().numpy()

    def lin(v: np.ndarray) -> np.ndarray:
        return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)

    def enc(v: np.ndarray) -> np.ndarray:
        v = np.clip(v, 0, 1)
        return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)

    mixed = np.array(DUBOIS_LEFT) @ lin(np.array([0.9, 0.2, 0.1])) + np.array(DUBOIS_RIGHT) @ lin(
        np.array([0.3, 0.6, 0.8]))
    np.testing.assert_allclose(out, enc(mixed), atol=1e-5)
    # a white pair stays close to white through the glasses' least-squares projection
    white = pack(torch.ones(1, 3, 1, 1), torch.ones(1, 3, 1, 1), OutputFormat.ANAGLYPH).flatten().numpy()
    assert white.min() > 0.85


def test_srgb_round_trip() -> None:
    values = torch.linspace(0, 1, 101)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(values)).numpy(), values.numpy(), atol=1e-5)


def test_uint8_packing_is_bit_exact_for_the_left_eye_and_rounds_the_right() -> None:
    rng = np.random.default_rng(1)
    u8 = torch.from_numpy(rng.integers(0, 256, (1, 5, 7, 3), dtype=np.uint8))
    left = u8.permute(0, 3, 1, 2).float() / 255
    right = torch.full((1, 3, 5, 7), 100.4 / 255)
    right[:, 1] = 100.6 / 255
    out = pack_uint8(u8, left, right.clone(), OutputFormat.SBS).numpy()
    np.testing.assert_array_equal(out[0, :, :7], u8[0].numpy())
    assert (out[0, :, 7:, 0] == 100).all() and (out[0, :, 7:, 1] == 101).all()
    out_tb = pack_uint8(u8, left, right.clone(), OutputFormat.TB).numpy()
    np.testing.assert_array_equal(out_tb[0, :5], u8[0].numpy())
    assert (out_tb[0, 5:, :, 2] == 100).all()


def test_cpu_fast_paths_match_the_generic_torch_paths() -> None:
    """The OpenCV shortcuts used on CPU give what the plain torch code (the GPU path) gives."""
    from stereo_spot.stereo.guided import _luma_cv2, _luma_torch
    from stereo_spot.stereo.pack import _planes_to_uint8_cv2, _planes_to_uint8_torch
    from stereo_spot.stereo.resample import _resize_cv2, _resize_torch

    frames = torch.rand(2, 3, 36, 64)
    np.testing.assert_allclose(_luma_cv2(frames).numpy(), _luma_torch(frames).numpy(), atol=1e-5)
    np.testing.assert_allclose(_resize_cv2(frames, (9, 16), area=True).numpy(),
                               _resize_torch(frames, (9, 16), area=True).numpy(), atol=1e-5)
    small = torch.rand(2, 2, 9, 16)
    np.testing.assert_allclose(_resize_cv2(small, (36, 64), area=False).numpy(),
                               _resize_torch(small, (36, 64), area=False).numpy(), atol=1e-4)
    a = torch.empty(2, 36, 64, 3, dtype=torch.uint8)
    b = torch.empty(2, 36, 64, 3, dtype=torch.uint8)
    _planes_to_uint8_cv2(frames.clone(), a)
    _planes_to_uint8_torch(frames.clone(), b)
    assert (a.int() - b.int()).abs().max() <= 1  # OpenCV rounds halves to even
