"""Calibration observers: the activation range `int8_static` fixes before deployment, and its scale / zero point.

An observer watches the tensors a layer receives during a calibration pass and turns what it saw into int8
quantization parameters. The statistics come from PyTorch's own observers (`torch.ao.quantization`):

- `minmax`: `MinMaxObserver`, the exact minimum and maximum ever seen;
- `moving_average_minmax`: `MovingAverageMinMaxObserver`, an exponential moving average of each tensor's minimum
  and maximum (`min ← min + c·(min_x − min)`, `c` = `averaging_constant`), so one unusual batch moves the range
  only by the fraction `c`;
- `histogram`: `HistogramObserver`'s histogram of every value seen (`bins` bins over the observed range, re-binned
  as the range grows), from which a range is chosen by `method`:

  - `mse`: `HistogramObserver`'s own search (`_non_linear_param_search`), which narrows the range while that lowers
    the L2 error between the values and their int8 round trip (clipping included);
  - `entropy`: the TensorRT calibration (Migacz, "8-bit Inference with TensorRT", 2017): the clipping threshold
    whose int8 version of the histogram loses the least information (KL divergence);
  - `percentile`: the narrowest range that holds `percentile` % of the values.

`entropy` and `percentile` are written here by hand because neither PyTorch nor torchao provides them: PyTorch's
`HistogramObserver` implements only the L2 search, and torchao's calibration (`AffineQuantizedMinMaxObserver`)
only min-max. Both work on `HistogramObserver`'s histogram (`histogram`, `min_val`, `max_val`, `bins`), so every
method sees the same statistics.

Quantization parameters follow `torch.ao`'s int8 convention (`qint8`, integers -128..127), which is also torchao's
(`choose_qparams_affine`, `Int8Tensor`):

- symmetric: zero point 0 and scale = max(|min|, |max|) / 127.5 (half the 255 steps of the integer range): the
  extreme value of the sign that reaches max(|min|, |max|) maps to ±127.5 and is clamped to -128 or 127;
- affine: scale = (max − min) / 255 and zero point = -128 − round(min / scale), so the range's minimum maps to
  -128 and its maximum to 127 (x ≈ scale·(x_q − zero point)). As in `torch.ao`, the range is widened to hold 0
  first, so zero is exactly representable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.ao.quantization import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

from lightft.errors import LightFTError

ObserverName = Literal["minmax", "moving_average_minmax", "histogram"]
MethodName = Literal["entropy", "mse", "percentile"]
OBSERVERS = ("minmax", "moving_average_minmax", "histogram")
METHODS = ("entropy", "mse", "percentile")
QUANT_MIN, QUANT_MAX = -128, 127
LEVELS = QUANT_MAX - QUANT_MIN + 1  # 256 integer values
EMPTY_BIN = 1e-4  # the count the entropy search gives a bin its quantized histogram leaves empty (as MXNet's)
AFFINE_STRIDE = 8  # the affine entropy search's coarse step, in bins
FOLD_UPSAMPLE = 8  # sub-bins per bin when folding the signed histogram onto |x|


@dataclass(frozen=True)
class Calibration:
    """How `int8_static` calibrates its activation ranges.

    Args:
        observer: `minmax` (the exact minimum and maximum seen), `moving_average_minmax` (a moving average of each
            batch's minimum and maximum, weighting a new batch by `averaging_constant`) or `histogram` (a histogram
            of every value, whose range `method` chooses).
        method: How `histogram` chooses the range: `mse` (least L2 error of the int8 round trip), `entropy`
            (TensorRT's least KL divergence between the histogram and its int8 version) or `percentile` (the
            narrowest range holding `percentile` % of the values). Only read by `histogram`.
        percentile: The share of values (in %, in (0, 100]) the `percentile` range holds: of |x| for symmetric
            activations, of the signed values (the rest split between both tails) for affine ones.
        averaging_constant: The weight (in (0, 1]) of each new batch in `moving_average_minmax`; 1 keeps only the
            last batch's range.
        bins: Histogram bins of `histogram` (at least 256, one per int8 value); more bins resolve narrower ranges
            when a few outliers stretch the histogram.
        examples: Validation examples the calibration pass runs through the model.
    """

    observer: ObserverName = "minmax"
    method: MethodName = "mse"
    percentile: float = 99.99
    averaging_constant: float = 0.01
    bins: int = 2048
    examples: int = 32

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise LightFTError(
                f"--calibration.observer: unknown observer '{self.observer}'; choose minmax, moving_average_minmax "
                "or histogram."
            )
        if self.method not in METHODS:
            raise LightFTError(
                f"--calibration.method: unknown histogram method '{self.method}'; choose entropy, mse or percentile."
            )
        if not 0 < self.percentile <= 100:
            raise LightFTError(
                f"--calibration.percentile: {self.percentile} is outside (0, 100]; give the share of values the "
                "range must hold, e.g. 99.99."
            )
        if not 0 < self.averaging_constant <= 1:
            raise LightFTError(
                f"--calibration.averaging_constant: {self.averaging_constant} is outside (0, 1]; give the weight of "
                "each new batch, e.g. 0.01."
            )
        if self.bins < LEVELS:
            raise LightFTError(
                f"--calibration.bins: {self.bins} histogram bins are too few; give at least {LEVELS} (one per int8 "
                "value), e.g. 2048."
            )
        if self.examples < 1:
            raise LightFTError(
                f"--calibration.examples: {self.examples} calibration examples; give at least 1, e.g. 32."
            )


class Observer:
    """Watches tensors (`forward`) and gives the int8 range (`range`) and parameters (`qparams`) they call for.

    Wraps one of `torch.ao.quantization`'s per-tensor observers (`module`), set up for `qint8` (-128..127) with
    the symmetric or affine scheme. Non-finite values are dropped before they reach it (an infinite activation
    would make every range infinite); `numel` counts the values observed.
    """

    def __init__(self, module: MinMaxObserver | HistogramObserver, symmetric: bool) -> None:
        self.module = module
        self.symmetric = symmetric
        self.numel = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe the values of `x` (any shape); returns `x` unchanged."""
        values = x.detach().float().flatten()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            values = values[finite]
        if values.numel():
            self.module.to(values.device)
            self.module(values)
            self.numel += values.numel()
        return x

    __call__ = forward

    def range(self) -> tuple[float, float]:
        """The (min, max) the quantization covers (before the zero point's widening to hold 0)."""
        raise NotImplementedError

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(scale, zero_point)`, each of shape (1,) (float32, int64), in `torch.ao`'s convention (module docstring)."""
        low, high = self.range()
        return self.module.cpu()._calculate_qparams(torch.tensor(low), torch.tensor(high))

    def _check_observed(self) -> None:
        if not self.numel:
            raise ValueError("the observer has seen no (finite) values; call forward() on a tensor first.")


class MinMaxRange(Observer):
    """The range of `MinMaxObserver` (exact) or `MovingAverageMinMaxObserver` (moving average)."""

    def range(self) -> tuple[float, float]:
        """The observed (or averaged) minimum and maximum."""
        self._check_observed()
        return float(self.module.min_val), float(self.module.max_val)


class HistogramRange(Observer):
    """A range chosen from `HistogramObserver`'s histogram by `method` (`mse`, `entropy` or `percentile`)."""

    def __init__(self, module: HistogramObserver, symmetric: bool, method: MethodName, percentile: float) -> None:
        super().__init__(module, symmetric)
        self.method = method
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        """The range `method` chooses; the full observed range when every value was the same."""
        self._check_observed()
        module = self.module.cpu()  # the searches index the histogram bin by bin
        low, high = float(module.min_val), float(module.max_val)
        if high <= low:
            return low, high
        if self.method == "mse":
            new_min, new_max = module._non_linear_param_search()
            return float(new_min), float(new_max)
        histogram = module.histogram.double()
        if self.method == "entropy":
            return entropy_range(histogram, low, high, self.symmetric)
        return percentile_range(histogram, low, high, self.percentile, self.symmetric)


def make_observer(calibration: Calibration, symmetric: bool) -> Observer:
    """A fresh observer for one tensor stream, as `calibration` describes, for symmetric or affine int8."""
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    common = {"dtype": torch.qint8, "qscheme": qscheme, "quant_min": QUANT_MIN, "quant_max": QUANT_MAX}
    if calibration.observer == "minmax":
        return MinMaxRange(MinMaxObserver(**common), symmetric)
    if calibration.observer == "moving_average_minmax":
        module = MovingAverageMinMaxObserver(averaging_constant=calibration.averaging_constant, **common)
        return MinMaxRange(module, symmetric)
    module = HistogramObserver(bins=calibration.bins, **common)
    return HistogramRange(module, symmetric, calibration.method, calibration.percentile)


# -- hand-written range selection on a histogram (neither torch.ao nor torchao has these) --------------------------


def fold_histogram(histogram: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, float]:
    """The histogram of |x| over [0, max(|low|, |high|)] (same number of bins) from one of x over [low, high].

    Each bin is split into `FOLD_UPSAMPLE` equal sub-bins (its mass spread evenly, as `HistogramObserver` does when
    it re-bins), and each sub-bin's mass goes to the |x| bin holding the |x| of its centre.

    Returns:
        The |x| histogram and its upper edge.
    """
    bins = histogram.numel()
    amax = max(abs(low), abs(high))
    width = (high - low) / (bins * FOLD_UPSAMPLE)
    centres = low + (torch.arange(bins * FOLD_UPSAMPLE, dtype=torch.float64) + 0.5) * width
    target = (centres.abs() / amax * bins).long().clamp(0, bins - 1)
    mass = histogram.double().repeat_interleave(FOLD_UPSAMPLE) / FOLD_UPSAMPLE
    return torch.bincount(target, weights=mass, minlength=bins), amax


def _quantile(histogram: torch.Tensor, low: float, high: float, share: float) -> float:
    """The value below which `share` (0..1) of the histogram's mass lies, values uniform within each bin."""
    bins = histogram.numel()
    width = (high - low) / bins
    cumulative = histogram.cumsum(0)
    target = share * float(cumulative[-1])
    index = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=cumulative.dtype)).clamp(max=bins - 1))
    before = float(cumulative[index - 1]) if index else 0.0
    count = float(histogram[index])
    fraction = min(max((target - before) / count, 0.0), 1.0) if count > 0 else 1.0
    return low + (index + fraction) * width


def percentile_range(
    histogram: torch.Tensor, low: float, high: float, percentile: float, symmetric: bool
) -> tuple[float, float]:
    """The narrowest range holding `percentile` % of the values a histogram over [low, high] counts.

    Symmetric: [-t, t] with t the `percentile` % quantile of |x| (from `fold_histogram`), cut to [low, high].
    Affine: the signed values' quantiles at (100 − p)/2 % and 100 − (100 − p)/2 %, so each tail loses half of what
    the range leaves out. Values are taken as uniform within each bin.
    """
    if symmetric:
        folded, amax = fold_histogram(histogram, low, high)
        threshold = _quantile(folded, 0.0, amax, percentile / 100)
        return max(low, -threshold), min(high, threshold)
    tail = (1 - percentile / 100) / 2
    return _quantile(histogram, low, high, tail), _quantile(histogram, low, high, 1 - tail)


def kl_divergences(histogram: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, levels: int) -> torch.Tensor:
    """TensorRT's information loss of clipping a histogram to each window [starts[i], ends[i]) of bins.

    For a window, P is the histogram inside it with the mass outside folded into its first and last bins (the
    clipped values saturate there), and Q is the window's own bins (without the clipped mass) merged into `levels`
    groups of consecutive bins (the int8 values; bin k of a window of w bins starting at s is in group
    ⌊(k − s)·levels / w⌋) and spread back evenly over the bins P holds mass in. A group Q leaves (nearly) empty
    where P has mass counts `EMPTY_BIN` per bin (MXNet's smoothing), so clipping into an empty stretch costs a
    finite amount. Computed per group from prefix sums (O(levels) per window, not O(bins)):
    KL = (Σ p·log p − Σ_g P_g·log q_g) / T − log T + log Σ_g n_g·q_g, with T the total mass, P_g the mass of P in
    group g, n_g its bins with mass and q_g the value Q gives each of them.

    Args:
        histogram: Bin counts.
        starts: First bin of each window.
        ends: One past the last bin of each window; each window holds at least `levels` bins.
        levels: The integer values the window is quantized to.

    Returns:
        KL(P || Q) per window (float64).
    """
    h = histogram.double()
    zero = h.new_zeros(1)
    mass = torch.cat([zero, h.cumsum(0)])  # mass[k]: the mass of bins < k
    held = torch.cat([zero, (h > 0).double().cumsum(0)])
    entropy = torch.cat([zero, torch.xlogy(h, h).cumsum(0)])
    total = mass[-1]
    first, last = starts.long(), ends.long() - 1
    width = (ends - starts).long()[:, None]
    group = torch.arange(levels + 1)[None, :]
    bounds = starts.long()[:, None] + (group * width + levels - 1) // levels  # group g: bins [bounds[g], bounds[g+1])
    raw = mass[bounds[:, 1:]] - mass[bounds[:, :-1]]
    below, above = mass[starts.long()], total - mass[ends.long()]
    p = raw.clone()
    p[:, 0] += below
    p[:, -1] += above
    count = held[bounds[:, 1:]] - held[bounds[:, :-1]]
    count[:, 0] += ((h[first] == 0) & (below > 0)).double()
    count[:, -1] += ((h[last] == 0) & (above > 0)).double()
    q = torch.where(count > 0, (raw / count.clamp(min=1)).clamp(min=EMPTY_BIN), 0.0)
    p_log_p = (
        entropy[ends.long()]
        - entropy[starts.long()]
        - torch.xlogy(h[first], h[first])
        - torch.xlogy(h[last], h[last])
        + torch.xlogy(h[first] + below, h[first] + below)
        + torch.xlogy(h[last] + above, h[last] + above)
    )
    p_log_q = torch.xlogy(p, q).sum(1)
    return (p_log_p - p_log_q) / total - total.log() + (count * q).sum(1).log()


def _scan(histogram: torch.Tensor, candidates: torch.Tensor, window: Callable[[torch.Tensor], Any], stride: int) -> int:
    """The candidate (a bin index) whose window `window(candidates) -> (starts, ends)` loses the least (KL).

    Every `stride`-th candidate is scored, then every one within `stride` of the best of those.
    """
    coarse = candidates[::stride]
    best = int(coarse[kl_divergences(histogram, *window(coarse), LEVELS).argmin()])
    fine = candidates[(candidates >= best - stride) & (candidates <= best + stride)]
    return int(fine[kl_divergences(histogram, *window(fine), LEVELS).argmin()])


def entropy_range(histogram: torch.Tensor, low: float, high: float, symmetric: bool) -> tuple[float, float]:
    """The range whose int8 version of the histogram (over [low, high]) loses the least information (KL).

    Symmetric (TensorRT's algorithm): on the |x| histogram (`fold_histogram`), every threshold t from 128 bins
    (one per non-negative int8 value) to all of them; the range is [-t, t] cut to [low, high]. Affine: on the signed
    histogram with 256 levels, the two ends are searched in turn (the upper end with the lower one fixed, then the
    lower end, twice over: a coordinate descent instead of scoring all O(bins²) windows), each end every
    `AFFINE_STRIDE` bins first and then bin by bin around the best.
    """
    bins = histogram.numel()
    if symmetric:
        folded, amax = fold_histogram(histogram, low, high)
        levels = LEVELS // 2
        ends = torch.arange(levels, bins + 1)
        best = int(ends[kl_divergences(folded, torch.zeros_like(ends), ends, levels).argmin()])
        threshold = amax * best / bins
        return max(low, -threshold), min(high, threshold)
    start, end = 0, bins
    for _ in range(2):
        ends = torch.arange(start + LEVELS, bins + 1)
        end = _scan(histogram, ends, lambda e, s=start: (torch.full_like(e, s), e), AFFINE_STRIDE)
        starts = torch.arange(0, end - LEVELS + 1)
        start = _scan(histogram, starts, lambda s, e=end: (s, torch.full_like(s, e)), AFFINE_STRIDE)
    width = (high - low) / bins
    return low + start * width, low + end * width
