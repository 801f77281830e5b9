"""r > 1 coded models: every square submatrix invertible, any r missing outputs recovered."""

from itertools import combinations

import numpy as np
import pytest

from coin import CodingError
from coin.multicode import cauchy_coding_matrix, check_coding_matrix, decode_missing, worst_condition


@pytest.mark.parametrize("n,r", [(2, 1), (3, 2), (4, 2), (4, 3), (6, 3)])
def test_cauchy_matrix_is_positive_normalised_and_mds(n, r):
    b = cauchy_coding_matrix(n, r)
    assert b.shape == (r, n) and np.all(b > 0) and np.allclose(b.sum(1), 1)
    for size in range(1, r + 1):
        for rows in combinations(range(r), size):
            for cols in combinations(range(n), size):
                assert abs(np.linalg.det(b[np.ix_(rows, cols)])) > 1e-12
    assert np.isfinite(worst_condition(b))


def test_any_r_missing_outputs_are_decoded_exactly_for_linear_codes():
    rng = np.random.default_rng(1)
    n, r = 4, 3
    b = cauchy_coding_matrix(n, r)
    outs = rng.normal(size=(n, 7, 5))
    coded = np.einsum("kj,jsc->ksc", b, outs)
    for size in range(1, r + 1):
        for missing in combinations(range(n), size):
            for coded_back in combinations(range(r), size):
                got = decode_missing(outs, coded, b, list(missing), list(coded_back))
                assert np.allclose(got, outs[list(missing)], atol=1e-9)


def test_condition_number_grows_with_r():
    assert worst_condition(cauchy_coding_matrix(4, 1)) < worst_condition(cauchy_coding_matrix(4, 2))
    assert worst_condition(cauchy_coding_matrix(4, 2)) < worst_condition(cauchy_coding_matrix(4, 3))


def test_bad_coding_input():
    with pytest.raises(CodingError, match="positive"):
        check_coding_matrix([[0.5, 0.6]], 2)
    with pytest.raises(CodingError, match="shape"):
        check_coding_matrix([[0.5, 0.5]], 3)
    with pytest.raises(CodingError, match="at least as many"):
        decode_missing(np.zeros((3, 1, 2)), np.zeros((1, 1, 2)), cauchy_coding_matrix(3, 1), [0, 1], [0])


def test_worst_condition_of_many_coded_rows_looks_only_at_systems_that_can_arise():
    # 30 coded rows for 2 experts: a decode solves at most a 2 x 2 system, so subsets of more than 2 rows never
    # arise (enumerating them all was 2^30 systems); the worst is over every row, and every pair of rows
    b = cauchy_coding_matrix(2, 30)
    by_hand = max(max(np.linalg.cond(b[[i]][:, [j]]) for i in range(30) for j in range(2)),
                  max(np.linalg.cond(b[[i, k]]) for i in range(30) for k in range(i + 1, 30)))
    assert worst_condition(b) == pytest.approx(by_hand)
