"""optimizer.evaluation.agreement_standard_error: the binomial standard error of the agree bits."""
import math

from optimizer.evaluation import agreement_standard_error, paired_difference


def test_agreement_se_is_the_standard_error_of_the_agree_bits():
    rec = {"images_sha256": "x", "correct": "1100", "agree": "1110"}
    p, n = 0.75, 4
    assert math.isclose(agreement_standard_error(rec), 100 * math.sqrt(p * (1 - p) * n / (n - 1) / n))
    assert agreement_standard_error({"agree": "1"}) is None and agreement_standard_error({}) is None


def test_paired_difference_unchanged():
    a = {"images_sha256": "x", "correct": "1101"}
    b = {"images_sha256": "x", "correct": "1001"}
    d, se = paired_difference(a, b)
    assert math.isclose(d, 25.0) and math.isclose(se, 100 * math.sqrt(0.25 * 0.75 * 4 / 3 / 4))
