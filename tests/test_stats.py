"""utils/stats.py against values computed by hand (the arithmetic is in the comments) and
against printed t tables, plus properties every paired interval must have."""

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.stats import (
    Verdict,
    describe,
    equivalence,
    holm,
    interval_text,
    paired_difference,
    t_critical,
    t_quantile,
    t_two_sided_p,
)

# Student t


@pytest.mark.parametrize(
    "df, expected",
    [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (10_000, 1.960)],
)
def test_t_critical_matches_the_printed_table_to_3_decimals(df, expected):
    assert round(t_critical(df), 3) == expected


def test_t_quantile_matches_the_closed_forms_for_df_1_and_2():
    # df 1 is the Cauchy: t_q = tan(pi (q - 1/2)); t_.975 = tan(0.475 pi) = 12.7062
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-9)
    # df 2: t_q = (2q - 1) / sqrt(2 q (1 - q)); t_.975 = 0.95 / sqrt(0.04875) = 4.30265
    assert t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(0.04875), rel=1e-9)
    # symmetric: the 0.025-quantile is minus the 0.975-quantile; the median is 0
    assert t_quantile(0.025, 2) == pytest.approx(-t_quantile(0.975, 2))
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    # the 90 % interval's multiplier (TOST at 5 %): t_.95 for df 2 = 0.9 / sqrt(0.095) = 2.91999
    assert t_critical(2, 0.90) == pytest.approx(0.9 / math.sqrt(0.095), rel=1e-9)
    # df = inf is the normal: 1.95996
    assert t_critical(math.inf) == pytest.approx(statistics.NormalDist().inv_cdf(0.975))


def test_two_sided_p_of_a_t_statistic():
    assert round(t_two_sided_p(2.0, 5), 4) == 0.1019  # the table value for t = 2.0, df 5
    # df 1: p = 1 - (2 / pi) atan|t|; t = 1 gives 1 - (2 / pi)(pi / 4) = 0.5
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5)
    assert t_two_sided_p(-1.0, 1) == pytest.approx(0.5)
    # df 2: p = 1 - |t| / sqrt(t^2 + 2); t = 1 gives 1 - 1 / sqrt(3) = 0.42265
    assert t_two_sided_p(1.0, 2) == pytest.approx(1 - 1 / math.sqrt(3))
    assert t_two_sided_p(0.0, 3) == 1.0


@settings(max_examples=50, deadline=None)
@given(q=st.floats(0.51, 0.9999), df=st.sampled_from([1, 2, 3, 5, 8, 20, 100, 1000]))
def test_t_quantile_inverts_the_p_value(q, df):
    assert t_two_sided_p(t_quantile(q, df), df) == pytest.approx(2 * (1 - q), rel=1e-7)


@pytest.mark.parametrize("q, df", [(0.0, 3), (1.0, 3), (0.975, 0), (0.975, -1)])
def test_t_quantile_refuses_what_has_no_answer(q, df):
    with pytest.raises(ValueError):
        t_quantile(q, df)


# Paired difference


def test_three_seeds_by_hand():
    # composite - simple per seed: 11-10, 22-20, 33-30 = 1, 2, 3
    d = paired_difference([10, 20, 30], [11, 22, 33])
    assert d.n == 3 and d.mean == 2.0  # (1 + 2 + 3) / 3
    assert d.sd == pytest.approx(1.0)  # sqrt(((1-2)^2 + 0 + (3-2)^2) / (3 - 1)) = sqrt(1)
    assert d.se == pytest.approx(0.57735, abs=1e-5)  # 1 / sqrt(3)
    # t_.975,2 = 4.30265; half-width 4.30265 * 0.57735 = 2.48414: 2 ± 2.484
    assert d.ci == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-5)
    assert d.t == pytest.approx(3.46410, abs=1e-5)  # 2 / 0.57735 = 2 sqrt(3)
    # df 2: p = 1 - t / sqrt(t^2 + 2) = 1 - 3.46410 / sqrt(14) = 1 - 0.92582 = 0.07418
    assert d.p == pytest.approx(0.07418, abs=1e-5)
    assert d.d_z == pytest.approx(2.0)  # 2 / 1
    assert not d.all_equal
    # 90 %: t_.95,2 = 2.91999; 2.91999 * 0.57735 = 1.68586: [0.31414, 3.68586]
    assert d.interval(0.90) == pytest.approx((0.31414, 3.68586), abs=1e-5)
    assert describe(d) == "+2.0 [-0.5, +4.5] (n = 3, d_z 2.0)"
    assert describe(d, unit="MB") == "+2.0 [-0.5, +4.5] MB (n = 3, d_z 2.0)"
    assert interval_text(d) == "+2.0 [-0.5, +4.5]"


def test_the_difference_is_arm_b_minus_arm_a():
    # differences 3-5, 4-5 = -2, -1: mean -1.5, sd sqrt((0.25 + 0.25) / 1) = 0.70711, se 0.5
    d = paired_difference([5, 5], [3, 4])
    assert d.mean == -1.5 and d.se == pytest.approx(0.5)
    assert d.d_z == pytest.approx(-1.5 / math.sqrt(0.5))  # -2.12132
    # t_.975,1 = 12.70620; 12.70620 * 0.5 = 6.35310: [-7.8531, 4.8531]
    assert d.ci == pytest.approx((-7.85310, 4.85310), abs=1e-5)
    assert describe(d) == "-1.5 [-7.9, +4.9] (n = 2, d_z -2.1)"


def test_one_seed_says_n_equals_1_and_gives_no_interval():
    d = paired_difference([1.0], [4.2])
    assert (d.n, d.mean) == (1, pytest.approx(3.2))
    assert d.sd is d.se is d.ci is d.t is d.p is d.d_z is None
    assert d.interval(0.90) is None
    assert describe(d) == "n = 1: +3.20 (no interval)"
    assert describe(d, unit="MB") == "n = 1: +3.20 MB (no interval)"
    assert interval_text(d) == "+3.20 (n = 1)"
    assert "±" not in describe(d)
    verdict = equivalence(d, smallest_effect=10.0)
    assert verdict.verdict is Verdict.NO_TEST and "n = 1" in verdict.sentence


def test_equal_differences_give_a_zero_width_interval_and_say_why():
    d = paired_difference([1, 2, 3], [3, 4, 5])  # 2, 2, 2
    assert d.all_equal and d.sd == 0.0 and d.ci == (2.0, 2.0)
    assert d.t is d.p is d.d_z is None  # no spread, no t statistic
    assert describe(d) == "+2.00 [+2.00, +2.00] (n = 3, all 3 differences equal)"
    assert interval_text(d) == "+2.00 [+2.00, +2.00]"
    assert "±" not in describe(d)
    assert equivalence(d).verdict is Verdict.DIFFERENT
    assert "all 3 differences equal" in equivalence(d).sentence
    same = paired_difference([1, 2, 3], [1, 2, 3])  # 0, 0, 0
    assert equivalence(same, smallest_effect=0.5).verdict is Verdict.EQUIVALENT


def test_arms_must_share_the_seeds():
    with pytest.raises(ValueError):
        paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        paired_difference([], [])
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1, math.nan])


# Holm


def test_holm_by_hand():
    # sorted: 0.01 (x4 = 0.04), 0.03 (x3 = 0.09), 0.04 (x2 = 0.08, raised to 0.09 to stay
    # monotone), 0.20 (x1 = 0.20); back in the given order:
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    # capped at 1: 0.5 x 2 = 1.0, then 0.6 x 1 = 0.6 raised to 1.0
    assert holm([0.6, 0.5]) == [1.0, 1.0]
    # a contrast with no test is no member of the family: m = 2, 0.02 x 2 = 0.04, 0.3 x 1
    assert holm([0.3, None, 0.02]) == pytest.approx([0.3, None, 0.04])
    assert holm([]) == []


# Verdicts


def test_equivalence_uses_the_90_percent_interval_and_never_says_no_difference():
    d = paired_difference([0, 0, 0], [1, 2, 3])  # 95 % [-0.484, 4.484], 90 % [0.314, 3.686]
    assert equivalence(d, smallest_effect=4).verdict is Verdict.EQUIVALENT  # 3.686 < 4
    # 3.686 > 3: not inside, though the 95 % interval includes 0
    assert equivalence(d, smallest_effect=3).verdict is Verdict.NOT_SHOWN
    assert "within ±3" in equivalence(d, smallest_effect=3).sentence
    assert equivalence(d).verdict is Verdict.NOT_SHOWN  # no smallest effect: nothing to show
    # 90 % inside ±4.4 but the 95 % upper end 4.484 is not: TOST at 5 %, not the 95 % interval
    assert equivalence(d, smallest_effect=4.4).verdict is Verdict.EQUIVALENT
    with pytest.raises(ValueError):
        equivalence(d, smallest_effect=0)


def test_a_difference_is_different_and_may_yet_be_negligible():
    d = paired_difference([0, 0, 0], [4, 5, 6])  # mean 5, sd 1: 95 % 5 ± 2.484 = [2.516, 7.484]
    assert equivalence(d).verdict is Verdict.DIFFERENT
    assert equivalence(d, smallest_effect=5).verdict is Verdict.DIFFERENT  # 90 % up to 6.686
    # 90 % [3.314, 6.686] inside ±10: a real difference, smaller than matters
    assert equivalence(d, smallest_effect=10).verdict is Verdict.NEGLIGIBLE
    # t = 5 / 0.57735 = 8.660, p = 1 - 8.660 / sqrt(77) = 0.01307; Holm over a family decides
    assert d.p == pytest.approx(1 - 8.660254 / math.sqrt(77), rel=1e-5)
    assert equivalence(d, p_adjusted=0.07).verdict is Verdict.NOT_SHOWN
    assert equivalence(d, p_adjusted=0.04).verdict is Verdict.DIFFERENT


# Properties


spread_samples = st.lists(st.floats(-100, 100, allow_subnormal=False), min_size=2, max_size=12)


@settings(max_examples=100, deadline=None)
@given(a=spread_samples, shift=st.floats(-10, 10))
def test_interval_holds_the_mean_and_excludes_0_exactly_when_p_is_below_5_percent(a, shift):
    b = [x + shift + 0.1 * i * (-1) ** i for i, x in enumerate(a)]
    d = paired_difference(a, b)
    low, high = d.ci
    assert low <= d.mean <= high
    if d.p is not None and abs(d.p - 0.05) > 1e-6:
        assert (d.p < 0.05) == (low > 0 or high < 0)
    assert "±" not in describe(d)


def standardised(xs: list[float]) -> list[float]:
    """xs shifted and scaled to mean 0 and sample SD 1."""
    mean, sd = statistics.fmean(xs), statistics.stdev(xs)
    return [(x - mean) / sd for x in xs]


varied = st.lists(st.integers(-50, 50), min_size=2, max_size=15).filter(lambda v: len(set(v)) > 1)


@settings(max_examples=100, deadline=None)
@given(small=varied, large=varied, mean=st.floats(-5, 5), sd=st.floats(0.1, 10))
def test_the_interval_narrows_as_seeds_are_added_at_the_same_spread(small, large, mean, sd):
    if len(small) == len(large):
        return
    if len(small) > len(large):
        small, large = large, small

    def width(zs: list[float]) -> float:
        d = paired_difference([0.0] * len(zs), [mean + sd * z for z in zs])
        assert d.sd == pytest.approx(sd)
        return d.ci[1] - d.ci[0]

    # half-width t_.975,n-1 * sd / sqrt(n): both factors fall as n grows
    assert width(standardised(large)) < width(standardised(small))
