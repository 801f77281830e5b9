"""Streams made in bulk (sim.seeds) are numpy's own, word for word: checked against SeedSequence itself on seeds
and keys of one and of several 32-bit words, and the generators draw the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from sim.draws import SERVICE, stream
from sim.seeds import pcg64_states, streams


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1, 2**32, 2**40 + 7, 2**64 - 1, 12_345_678_901_234_567_890_123])
@pytest.mark.parametrize("purpose", [0, 5, 15, 2**32 - 1, 2**33 + 1])
def test_the_states_are_numpy_seed_sequence_s(seed: int, purpose: int) -> None:
    indices = np.array([0, 1, 2, 17, 4095, 2**31, 2**32 - 1])
    got = pcg64_states(seed, (purpose,), indices)
    want = np.stack([np.random.SeedSequence(seed, spawn_key=(purpose, int(i))).generate_state(4, np.uint64)
                     for i in indices])
    np.testing.assert_array_equal(got, want)


def test_bulk_streams_draw_what_one_stream_at_a_time_draws() -> None:
    indices = [0, 3, 4, 9, 10_000]
    made = list(streams(11, SERVICE, indices, chunk=2))  # chunks of two: the chunk edges are crossed
    assert [i for i, _ in made] == indices
    for i, rng in made:
        one = stream(11, SERVICE, i)
        np.testing.assert_array_equal(rng.random(50), one.random(50))
        np.testing.assert_array_equal(rng.standard_exponential(5), one.standard_exponential(5))  # and go on alike


def test_negative_or_wide_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        pcg64_states(-1, (0,), np.array([0]))
    with pytest.raises(ValueError, match="32-bit"):
        pcg64_states(0, (0,), np.array([2**32]))
