"""Paired comparisons of two arms over shared seeds: the difference with a t-interval and an
effect size, Holm's correction across a family of tests, and equivalence against a smallest
effect of interest. Pure Python (no scipy): the Student t distribution comes from the regularized
incomplete beta function.

    d = paired_difference(simple, composite)          # arm B minus arm A, seed by seed
    describe(d)                                       # '+2.0 [-0.5, +4.5] (n = 3, d_z 2.0)'
    interval_text(d)                                  # '+2.0 [-0.5, +4.5]'
    equivalence(d, smallest_effect=1.0).sentence
    holm([0.01, 0.04, 0.03, 0.20])                    # [0.04, 0.09, 0.09, 0.20]
"""

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05

# Student t


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), modified Lentz (Numerical Recipes 6.4); converges
    fast for x < (a + 1) / (a + b + 2), which _betainc arranges."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df > 0 degrees of freedom (df = inf: the normal)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return 2.0 * (1.0 - statistics.NormalDist().cdf(abs(t)))
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with df > 0 degrees of freedom, 0 < q < 1 (df = inf: the
    normal). Bisection on t_two_sided_p, to a relative 1e-12."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must lie in (0, 1), got {q}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(q)
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    target = 2.0 * (1.0 - q)  # the two-sided tail beyond the answer
    low, high = 0.0, 2.0
    while t_two_sided_p(high, df) > target:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_two_sided_p(mid, df) > target else (low, mid)
    return 0.5 * (low + high)


def t_critical(df: float, confidence: float = 1 - ALPHA) -> float:
    """The half-width multiplier of a two-sided `confidence` t-interval (4.303 for df 2, 95 %)."""
    return t_quantile(1.0 - (1.0 - confidence) / 2, df)


# Paired difference


@dataclass(frozen=True)
class PairedDifference:
    """Arm B minus arm A over n shared seeds. With n = 1 only `mean` is known (everything else
    None). With all differences equal (sd 0) the interval has zero width, which is honest only
    because they are equal (`all_equal` says so); no t statistic, p or d_z exists then."""

    n: int
    mean: float
    sd: float | None
    se: float | None
    ci: tuple[float, float] | None  # the 95 % t-interval
    t: float | None
    p: float | None  # two-sided, against a difference of 0
    d_z: float | None  # Cohen's d_z = mean / sd of the differences
    all_equal: bool

    def interval(self, confidence: float) -> tuple[float, float] | None:
        """The two-sided t-interval at `confidence` (None for n = 1)."""
        if self.se is None:
            return None
        half = t_critical(self.n - 1, confidence) * self.se
        return (self.mean - half, self.mean + half)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """b - a seed by seed (a[i] and b[i] come from the same seed): arm B minus arm A."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same seeds in both arms, got {len(a)} and {len(b)} values")
    diffs = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    if not all(math.isfinite(v) for v in diffs):
        raise ValueError(f"differences must be finite, got {diffs}")
    n, mean = len(diffs), statistics.fmean(diffs)
    if n == 1:
        return PairedDifference(1, mean, None, None, None, None, None, None, all_equal=True)
    all_equal = all(v == diffs[0] for v in diffs)
    sd = 0.0 if all_equal else statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    if all_equal:
        return PairedDifference(n, mean, sd, se, (mean, mean), None, None, None, all_equal=True)
    half = t_critical(n - 1) * se
    t = mean / se
    return PairedDifference(
        n, mean, sd, se, (mean - half, mean + half), t, t_two_sided_p(t, n - 1), mean / sd, False
    )


# Several contrasts


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the given order: the k-th smallest of m is
    multiplied by m - k + 1, made non-decreasing in that order, and capped at 1. A None (no test
    was possible) stays None and is not counted in m."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted


# Verdicts


class Verdict(enum.Enum):
    DIFFERENT = "different"
    NEGLIGIBLE = "negligible difference"  # different from 0, and yet equivalent within ±delta
    EQUIVALENT = "equivalent"
    NOT_SHOWN = "not shown equivalent"
    NO_TEST = "no test (n = 1)"


@dataclass(frozen=True)
class Equivalence:
    verdict: Verdict
    sentence: str


def equivalence(
    d: PairedDifference, smallest_effect: float | None = None, p_adjusted: float | None = None
) -> Equivalence:
    """What the data say about arm B minus arm A, never "no difference" by absence of evidence.

    Different: the difference test rejects 0 at 5 % (the 95 % interval excludes 0; with
    `p_adjusted`, e.g. Holm's across several measures, that p < 0.05 decides instead).
    Equivalent within ±smallest_effect: two one-sided t-tests (TOST) at 5 % each reject a
    difference of -delta or less and of +delta or more, which is the same as the 90 % interval
    (not the 95 % one) lying inside (-delta, +delta); a 95 % interval would make the test
    needlessly conservative (2.5 % per side). Both can hold: a real but negligible difference.
    Neither: not shown equivalent, and without a stated smallest effect nothing can be shown
    equivalent. With zero spread (all differences equal) the zero-width interval decides."""
    if smallest_effect is not None and not smallest_effect > 0:
        raise ValueError(f"the smallest effect of interest must be > 0, got {smallest_effect}")
    if d.n == 1:
        return Equivalence(Verdict.NO_TEST, "n = 1: no interval, no test")
    low, high = d.ci
    if p_adjusted is not None and d.p is not None:
        different = p_adjusted < ALPHA
    else:
        different = low > 0 or high < 0
    low90, high90 = d.interval(1 - 2 * ALPHA)
    within = smallest_effect is not None and -smallest_effect < low90 and high90 < smallest_effect
    equal = f" (all {d.n} differences equal)" if d.all_equal else ""
    delta = f"±{smallest_effect:g}" if smallest_effect is not None else ""
    if different and within:
        return Equivalence(
            Verdict.NEGLIGIBLE, f"different from 0, but equivalent within {delta}{equal}"
        )
    if different:
        adjusted = f" (adjusted p = {p_adjusted:.2g})" if p_adjusted is not None else ""
        return Equivalence(Verdict.DIFFERENT, f"different from 0 at 5 %{adjusted}{equal}")
    if within:
        return Equivalence(
            Verdict.EQUIVALENT, f"equivalent within {delta}: 90 % interval inside it{equal}"
        )
    if smallest_effect is None:
        return Equivalence(Verdict.NOT_SHOWN, "not shown equivalent (no smallest effect stated)")
    return Equivalence(Verdict.NOT_SHOWN, f"not shown equivalent within {delta}")


# Text


def _number(x: float, decimals: int | None = None, sign: bool = False) -> str:
    """x to `decimals` places (default: 3 significant digits); never '-0' or '+0'."""
    if decimals is None:
        decimals = _decimals(abs(x), 3)
    text = f"{x:.{decimals}f}"
    if float(text) == 0:
        return f"{0:.{decimals}f}"
    return f"{x:+.{decimals}f}" if sign else text


def _decimals(scale: float, significant: int) -> int:
    """Decimal places that show `scale` to `significant` digits (0 for whole numbers)."""
    if scale == 0 or not math.isfinite(scale):
        return 0
    return max(0, significant - 1 - math.floor(math.log10(scale)))


def interval_text(d: PairedDifference, unit: str = "") -> str:
    """The difference and its 95 % interval, '+2.0 [-0.5, +4.5]', the interval's half-width to
    2 significant digits and the rest to as many places; '+3.20 (n = 1)' without an interval;
    with zero spread the interval is printed as it is."""
    if d.n == 1:
        return f"{_mean_text(d, unit)} (n = 1)"
    return _mean_text(d, unit)


def describe(d: PairedDifference, unit: str = "") -> str:
    """One line for a table: interval_text with n and d_z, '+3.2 [-1.1, +7.5] (n = 3, d_z 0.9)';
    'n = 1: +3.2 (no interval)'; with zero spread the text says the differences are all equal."""
    if d.n == 1:
        return f"n = 1: {_mean_text(d, unit)} (no interval)"
    if d.all_equal:
        return f"{_mean_text(d, unit)} (n = {d.n}, all {d.n} differences equal)"
    d_z = _number(d.d_z, _decimals(abs(d.d_z), 2))
    return f"{_mean_text(d, unit)} (n = {d.n}, d_z {d_z})"


def _mean_text(d: PairedDifference, unit: str) -> str:
    """'+2.0 [-0.5, +4.5] unit', or '+3.20 unit' where there is no interval (n = 1)."""
    unit = f" {unit}" if unit else ""
    if d.n == 1:
        return f"{_number(d.mean, sign=True)}{unit}"
    low, high = d.ci
    places = _decimals(high - d.mean, 2) if high > d.mean else _decimals(abs(d.mean), 3)
    mean, low, high = (_number(v, places, sign=True) for v in (d.mean, low, high))
    return f"{mean} [{low}, {high}]{unit}"
