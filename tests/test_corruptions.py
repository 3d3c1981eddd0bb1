"""Common corruptions: ranges, severity ordering, determinism, and agreement with independent
implementations (PIL's BOX resize, scipy's Gaussian filter, colorsys' HSV)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import gaussian_filter

from workers.evaluation import corruptions as C
from workers.evaluation.corruptions import CORRUPTIONS, SEVERITIES, corrupt

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "fog"}
NAMES = CORRUPTIONS.names()
SHAPES = [(3, 32), (1, 28)]  # CIFAR-style and MNIST-style


def natural_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """Images with the 1/f amplitude spectrum of natural images, scaled to [0, 1] per image.

    Flat or very smooth synthetic images are not representative: pixelation of a smooth ramp
    does not grow monotonically with the pixel size, while on natural statistics it does.
    """
    g = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    amplitude = 1.0 / (fx**2 + fy**2).sqrt().clamp_min(1.0 / size)
    shape = (n, channels, size, size // 2 + 1)
    spectrum = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) * amplitude
    img = torch.fft.irfft2(spectrum, s=(size, size))
    lo, hi = img.amin(dim=(1, 2, 3), keepdim=True), img.amax(dim=(1, 2, 3), keepdim=True)
    return ((img - lo) / (hi - lo)).float()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_has_the_cifar10c_core() -> None:
    required = {"gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "brightness", "contrast",
                "pixelate", "jpeg_compression"}
    assert required <= set(NAMES)
    assert len(NAMES) >= 8


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_range_shape_and_severity_order(name: str, channels: int, size: int) -> None:
    x = natural_images(12, channels, size, seed=1)
    before = x.clone()
    distances = []
    for severity in SEVERITIES:
        out = corrupt(name, x, severity, gen(3))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        distances.append(float((out - x).abs().mean()))
    assert torch.equal(x, before), "corruptions must not modify their input"
    assert distances[0] > 1e-4, f"{name} severity 1 leaves the image (almost) unchanged"
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), (name, distances)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_generator_is_deterministic(name: str) -> None:
    x = natural_images(4, 3, 32, seed=2)
    first, second = corrupt(name, x, 3, gen(7)), corrupt(name, x, 3, gen(7))
    assert torch.equal(first, second)
    other = corrupt(name, x, 3, gen(8))
    # Random corruptions depend on the generator; the others must ignore it.
    assert torch.equal(first, other) == (name not in RANDOM)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    severity=st.sampled_from(SEVERITIES),
    channels=st.sampled_from([1, 3]),
    n=st.integers(1, 3),
    height=st.integers(5, 20),
    width=st.integers(5, 20),
    seed=st.integers(0, 2**31),
)
def test_any_batch_stays_in_the_box(name: str, severity: int, channels: int, n: int, height: int,
                                    width: int, seed: int) -> None:
    x = torch.rand(n, channels, height, width, generator=gen(seed))
    out = corrupt(name, x, severity, gen(seed))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_invalid_inputs_are_rejected_with_context() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="severity"):
        corrupt("contrast", x, 6, gen())
    with pytest.raises(ValueError, match="shape"):
        corrupt("contrast", torch.rand(2, 2, 8, 8), 1, gen())
    with pytest.raises(KeyError, match="unknown corruption 'snow'"):
        corrupt("snow", x, 1, gen())


def test_pixelate_matches_pil_box_resampling() -> None:
    image = natural_images(1, 1, 32, seed=4)[0, 0].numpy()
    for severity, scale in zip(SEVERITIES, C.PIXELATE_SCALE, strict=True):
        side = int(32 * scale)
        pil = Image.fromarray(image, mode="F").resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
        ours = corrupt("pixelate", torch.from_numpy(image)[None, None], severity, gen())[0, 0]
        np.testing.assert_allclose(ours.numpy(), np.clip(np.asarray(pil), 0, 1), atol=1e-6)


def test_gaussian_blur_matches_scipy() -> None:
    x = natural_images(2, 3, 32, seed=5)
    for severity, sigma in zip(SEVERITIES, C.GAUSSIAN_BLUR_SIGMA, strict=True):
        ours = corrupt("gaussian_blur", x, severity, gen())
        ref = gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_brightness_matches_hsv_round_trip() -> None:
    x = natural_images(1, 3, 6, seed=6)
    x[0, :, 0, 0] = 0.0  # a black pixel: hue and saturation undefined
    severity = 4
    ours = corrupt("brightness", x, severity, gen())[0].permute(1, 2, 0).numpy()
    pixels = x[0].permute(1, 2, 0).double().numpy()
    for i in range(6):
        for j in range(6):
            h, s, v = colorsys.rgb_to_hsv(*pixels[i, j])
            ref = colorsys.hsv_to_rgb(h, s, min(v + C.BRIGHTNESS_SHIFT[severity - 1], 1.0))
            np.testing.assert_allclose(ours[i, j], ref, atol=1e-6)


def test_contrast_keeps_channel_means_and_shrinks_spread() -> None:
    x = 0.25 + 0.5 * natural_images(3, 3, 16, seed=7)  # no clipping at any severity
    for severity, factor in zip(SEVERITIES, C.CONTRAST_FACTOR, strict=True):
        out = corrupt("contrast", x, severity, gen())
        torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-6, rtol=0)
        torch.testing.assert_close(out.std(dim=(2, 3)), factor * x.std(dim=(2, 3)), atol=1e-6, rtol=1e-5)


def test_noise_statistics_follow_the_constants() -> None:
    grey = torch.full((8, 3, 32, 32), 0.5)
    for severity in SEVERITIES:
        gauss = corrupt("gaussian_noise", grey, severity, gen(severity)) - grey
        std = C.GAUSSIAN_NOISE_STD[severity - 1]
        assert abs(float(gauss.std()) - std) < 0.05 * std
        flipped = (corrupt("impulse_noise", grey, severity, gen(severity)) != grey).float().mean()
        assert abs(float(flipped) - C.IMPULSE_NOISE_AMOUNT[severity - 1]) < 0.005
        shot = corrupt("shot_noise", grey, severity, gen(severity))
        rate = C.SHOT_NOISE_RATE[severity - 1]
        assert abs(float(shot.mean()) - 0.5) < 0.01  # Poisson noise is unbiased
        assert abs(float(shot.std()) - (0.5 / rate) ** 0.5) < 0.1 * (0.5 / rate) ** 0.5


def test_jpeg_output_is_decoded_8_bit() -> None:
    x = natural_images(4, 3, 32, seed=8)
    out = corrupt("jpeg_compression", x, 1, gen())
    levels = out * 255
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # 8-bit decoded pixels


def test_defocus_kernel_is_a_normalised_symmetric_disk() -> None:
    for radius, alias in C.DEFOCUS_BLUR:
        kernel = C.defocus_kernel(radius, alias)
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
        assert abs(float(kernel.sum()) - 1.0) < 1e-6
        torch.testing.assert_close(kernel, kernel.flip(0))
        torch.testing.assert_close(kernel, kernel.T)
        centre = kernel.shape[0] // 2
        assert float(kernel[centre, centre]) == float(kernel.max())


def test_plasma_fractal_is_normalised_per_map() -> None:
    maps = C.plasma_fractal(3, 32, 2.0, np.random.default_rng(0))
    assert maps.shape == (3, 32, 32)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    assert not np.allclose(maps[0], maps[1])  # every image gets its own haze
    with pytest.raises(ValueError, match="power of two"):
        C.plasma_fractal(1, 24, 2.0, np.random.default_rng(0))
