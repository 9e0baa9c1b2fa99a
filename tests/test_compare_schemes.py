"""The comparison's summary: mean and spread per scheme over seeds, computed by hand."""

import pytest

from compare_schemes import MEASURES, summarise


def row(scheme: str, seed: int, value: float) -> dict:
    return {"scheme": scheme, "seed": seed, **dict.fromkeys(MEASURES, value)}


def test_summary_gives_mean_and_sample_std_per_scheme_and_measure():
    rows = [row("simple", 1, 1.0), row("simple", 2, 3.0), row("composite", 1, 5.0)]
    summary = {(r["scheme"], r["measure"]): r for r in summarise(rows)}
    assert len(summary) == 2 * len(MEASURES)
    simple = summary[("simple", "fid_samples")]
    assert simple["seeds"] == 2 and simple["mean"] == 2.0
    assert simple["std"] == pytest.approx(2**0.5)  # sample std of (1, 3)
    composite = summary[("composite", "sharpness_ratio")]
    assert (composite["seeds"], composite["mean"], composite["std"]) == (1, 5.0, 0.0)
