"""Calibration observers on hand-built tensors: each range, the qparams conventions, and outlier clipping."""

from __future__ import annotations

import pytest
import torch

from lightft.errors import LightFTError
from lightft.quantization.observers import Calibration, fold_histogram, kl_divergences, make_observer

HISTOGRAM_METHODS = ("mse", "entropy", "percentile")


def observe(calibration: Calibration, symmetric: bool, *tensors: torch.Tensor):
    observer = make_observer(calibration, symmetric)
    for x in tensors:
        observer.forward(x)
    return observer


def bulk_error(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> float:
    """RMS error of the int8 round trip (quantize, dequantize) of `x`."""
    roundtrip = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), -128, 127)
    return float((roundtrip - x).pow(2).mean().sqrt())


@pytest.fixture
def outlier_heavy():
    """A standard-normal bulk of 200k values and five outliers 40..60 (one in 40k values each)."""
    bulk = torch.randn(200_000)
    return bulk, torch.cat([bulk, torch.tensor([40.0, -45.0, 50.0, 55.0, -60.0])])


@pytest.mark.parametrize(
    ("knobs", "key"),
    [
        ({"observer": "max"}, "--calibration.observer"),
        ({"method": "kl"}, "--calibration.method"),
        ({"percentile": 0.0}, "--calibration.percentile"),
        ({"percentile": 100.5}, "--calibration.percentile"),
        ({"averaging_constant": 0.0}, "--calibration.averaging_constant"),
        ({"averaging_constant": 1.5}, "--calibration.averaging_constant"),
        ({"bins": 100}, "--calibration.bins"),
        ({"examples": 0}, "--calibration.examples"),
    ],
)
def test_calibration_refuses_bad_knobs_in_one_line(knobs, key):
    with pytest.raises(LightFTError) as error:
        Calibration(**knobs)
    message = str(error.value)
    assert message.startswith(f"{key}:") and "\n" not in message


def test_calibration_defaults_are_valid():
    calibration = Calibration()
    assert (calibration.observer, calibration.method, calibration.examples) == ("minmax", "mse", 32)
    Calibration(percentile=100.0, averaging_constant=1.0, bins=256, examples=1)  # the bounds themselves are fine


@pytest.mark.parametrize("symmetric", [True, False])
def test_minmax_range_is_exact(symmetric):
    observer = observe(Calibration(), symmetric, torch.tensor([-3.0, 1.0, 2.0]), torch.tensor([[0.5, 7.0]]))
    assert observer.range() == (-3.0, 7.0)
    assert observer.numel == 5


def test_moving_average_lags_by_the_averaging_constant():
    c = 0.1
    a, b = torch.tensor([-2.0, 0.0, 4.0]), torch.tensor([-10.0, 3.0, 20.0])
    observer = observe(Calibration(observer="moving_average_minmax", averaging_constant=c), False, a, b)
    low, high = observer.range()
    assert low == pytest.approx(-2.0 + c * (-10.0 - -2.0))
    assert high == pytest.approx(4.0 + c * (20.0 - 4.0))


@pytest.mark.parametrize(
    "calibration",
    [Calibration(), Calibration(observer="moving_average_minmax")]
    + [Calibration(observer="histogram", method=method) for method in HISTOGRAM_METHODS],
    ids=["minmax", "moving_average_minmax", *HISTOGRAM_METHODS],
)
def test_symmetric_zero_point_is_zero(calibration):
    observer = observe(calibration, True, torch.randn(10_000) * 3 + 1)
    scale, zero_point = observer.qparams()
    assert zero_point.tolist() == [0]
    low, high = observer.range()
    # torch.ao's (and torchao's) convention: max |range| over half the 255 steps of -128..127
    assert float(scale) == pytest.approx(max(abs(low), abs(high)) / 127.5, rel=1e-6)


@pytest.mark.parametrize(
    "calibration",
    [Calibration()] + [Calibration(observer="histogram", method=method) for method in HISTOGRAM_METHODS],
    ids=["minmax", *HISTOGRAM_METHODS],
)
def test_affine_zero_point_maps_the_minimum_to_the_integer_minimum(calibration):
    observer = observe(calibration, False, torch.rand(50_000) * 5 - 2)  # skewed: -2..3
    low, high = observer.range()
    scale, zero_point = observer.qparams()
    assert float(scale) == pytest.approx((high - low) / 255, rel=1e-6)
    assert round(low / float(scale)) + int(zero_point) == -128
    assert abs(round(high / float(scale)) + int(zero_point) - 127) <= 1
    back = torch.tensor([low, high])
    roundtrip = torch.fake_quantize_per_tensor_affine(back, float(scale), int(zero_point), -128, 127)
    assert torch.allclose(roundtrip, back, atol=float(scale))


@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_clips_a_single_large_outlier(symmetric):
    bulk = torch.rand(100_000) * 2 - 1
    observer = observe(Calibration(observer="histogram", method="percentile"), symmetric, bulk, torch.tensor([50.0]))
    low, high = observer.range()
    assert 0.95 <= high <= 1.1, (low, high)  # far below the outlier, at the bulk's edge
    assert -1.1 <= low <= -0.95


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_histogram_mse_and_entropy_clip_a_heavy_outlier_and_keep_the_bulk(method, symmetric):
    # one outlier 50σ out among 2M values: the L2 search clips it only when the bulk's rounding error (which
    # clipping shrinks) outweighs the outlier's own clipping error, i.e. above ~255²·12 ≈ 780k values
    bulk = torch.randn(2_000_000)
    observer = observe(Calibration(observer="histogram", method=method), symmetric, bulk, torch.tensor([50.0]))
    low, high = observer.range()
    assert high < 10, (low, high)
    assert low < -3.3 and high > 3.3, (low, high)  # the bulk beyond 99.9 %


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_bulk_roundtrip_error_beats_minmax_on_outliers(outlier_heavy, method, symmetric):
    bulk, x = outlier_heavy
    minmax = bulk_error(bulk, *observe(Calibration(), symmetric, x).qparams())
    chosen = bulk_error(bulk, *observe(Calibration(observer="histogram", method=method), symmetric, x).qparams())
    assert chosen < minmax / 3, (chosen, minmax)


@pytest.mark.parametrize("symmetric", [True, False])
def test_entropy_keeps_the_full_range_of_an_outlier_free_tensor(symmetric):
    observer = observe(Calibration(observer="histogram", method="entropy"), symmetric, torch.rand(1_000_000) * 2 - 1)
    low, high = observer.range()
    assert low == pytest.approx(-1.0, abs=0.02) and high == pytest.approx(1.0, abs=0.02)


def test_histogram_range_grows_with_later_tensors():
    observer = observe(Calibration(observer="histogram", method="percentile", percentile=100.0), True)
    observer.forward(torch.linspace(-1, 1, 1000))
    observer.forward(torch.linspace(-4, 4, 1000))
    low, high = observer.range()
    assert low == pytest.approx(-4.0, abs=1e-3) and high == pytest.approx(4.0, abs=1e-3)


def test_non_finite_values_are_dropped():
    observer = observe(Calibration(), True, torch.tensor([1.0, float("inf"), -2.0, float("nan")]))
    assert observer.range() == (-2.0, 1.0)
    assert observer.numel == 2


def test_an_observer_that_saw_nothing_refuses_a_range():
    observer = observe(Calibration(), True, torch.empty(0))
    with pytest.raises(ValueError, match="no"):
        observer.range()


def test_fold_histogram_keeps_the_mass_and_maps_to_absolute_values():
    histogram = torch.tensor([1.0, 2.0, 0.0, 3.0])  # over [-2, 2]: bins [-2,-1), [-1,0), [0,1), [1,2]
    folded, amax = fold_histogram(histogram, -2.0, 2.0)
    assert amax == 2.0
    assert folded.sum().item() == pytest.approx(6.0)
    # |x| bins over [0, 2]: [0, .5), [.5, 1), [1, 1.5), [1.5, 2]
    assert folded.tolist() == pytest.approx([1.0, 1.0, 2.0, 2.0])


def test_kl_divergence_is_zero_without_clipping_or_merging_and_grows_with_clipping():
    histogram = torch.rand(512, dtype=torch.float64) + 0.5
    full = kl_divergences(histogram, torch.tensor([0]), torch.tensor([512]), 512)
    assert float(full) == pytest.approx(0.0, abs=1e-12)
    ends = torch.tensor([300, 400, 500])
    scores = kl_divergences(histogram, torch.zeros_like(ends), ends, 128)
    assert scores[0] > scores[1] > scores[2] > 0
