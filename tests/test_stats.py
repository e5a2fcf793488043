"""The statistics beside every gain: Welch's interval and p against scipy, Holm's adjustment
on known values, and the detectable effect against a simulation of the test it describes."""

import numpy as np
import pytest
from scipy.stats import ttest_ind

from softmaso.reporting.stats import compare, detectable_effect, holm


def test_welch_interval_and_p_agree_with_scipy():
    a, b = [91.2, 90.4, 91.9, 90.8, 91.5], [90.1, 90.9, 89.7, 90.3]
    c = compare(a, b)
    ref = ttest_ind(a, b, equal_var=False)
    low, high = ref.confidence_interval(0.95)
    assert c.gain == pytest.approx(np.mean(a) - np.mean(b))
    assert c.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx((low, high), rel=1e-9)


def test_below_two_runs_a_side_only_the_gain_is_known():
    c = compare([90.0], [89.0, 89.5])
    assert c.gain == pytest.approx(0.75)
    assert (c.ci_low, c.ci_high, c.p, c.detectable) == (None, None, None, None)
    assert compare([], [89.0]) is None


def test_holm_on_known_values():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert holm([0.03, 0.01, None, 0.5, 0.02]) == pytest.approx([0.06, 0.04, None, 0.5, 0.06])
    assert holm([0.4, 0.6]) == [0.8, 0.8]  # never below a smaller p's adjusted value
    assert holm([]) == []


def test_the_detectable_effect_is_detected_80_percent_of_the_time():
    """Simulate the Welch test it describes: 5 runs a side, sd 0.5, true gain = detectable."""
    rng = np.random.default_rng(0)
    n, sd, trials = 5, 0.5, 20000
    se = sd * np.sqrt(2 / n)
    delta = detectable_effect(se, df=2 * n - 2)
    a = rng.normal(delta, sd, (trials, n))
    b = rng.normal(0.0, sd, (trials, n))
    p = ttest_ind(a, b, axis=1, equal_var=False).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.80, abs=0.03)
    # and in the large-sample limit it is (z_0.975 + z_0.8) se
    assert detectable_effect(1.0, df=1e6) == pytest.approx(1.95996 + 0.84162, rel=1e-3)
