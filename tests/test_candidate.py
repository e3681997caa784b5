"""The candidate rule: fastest by median p50 over rounds; a variant as fast in some round ties with
it; ties go to accuracy, then size, then median p50."""

from __future__ import annotations

import pytest

from tasks.gate.candidate import Contender, choose_candidate, registration_order, rounds_as_fast
from tasks.gate.timing import summarise


def contender(name: str, p50s: list[float], accuracy: float = 0.8, size_mb: float = 10.0) -> Contender:
    # Each round of one request per p50 value: the round p50 is that value.
    timing = summarise(name, "onnxruntime", [[round(p * 1e6)] for p in p50s])
    return Contender(name=name, accuracy=accuracy, size_bytes=round(size_mb * 1e6), timing=timing)


def test_a_clear_winner_is_chosen_and_the_reason_says_so():
    fast = contender("fast", [1.0, 1.1, 1.0])
    slow = contender("slow", [2.0, 2.1, 1.9], accuracy=0.9)
    choice = choose_candidate([slow, fast])
    assert choice is not None and choice.name == "fast" and choice.tied == ["fast"]
    assert choice.reason == (
        "fast fastest by median p50 over 3 rounds (1.00 ms); "
        "no other passing variant was as fast in any round"
    )
    assert registration_order([slow, fast], choice) == ["slow", "fast"]


def test_a_variant_as_fast_in_one_round_ties_and_wins_on_accuracy():
    fastest = contender("fastest", [1.0, 1.0, 1.0], accuracy=0.78)
    close = contender("close", [1.2, 0.9, 1.1], accuracy=0.80)
    choice = choose_candidate([fastest, close])
    assert choice is not None and choice.name == "close"
    assert rounds_as_fast(fastest.timing, close.timing) == [2]
    assert "tied with close (as fast in round 2)" in choice.reason
    assert "close chosen for higher accuracy (0.8000 vs 0.7800 for fastest)" in choice.reason
    assert registration_order([fastest, close], choice) == ["fastest", "close"]


def test_equal_accuracy_ties_go_to_the_smaller_model():
    fastest = contender("fastest", [1.0, 1.0], size_mb=20)
    smaller = contender("smaller", [1.0, 1.3], size_mb=12)
    choice = choose_candidate([fastest, smaller])
    assert choice is not None and choice.name == "smaller"
    assert "equal accuracy and smaller size (12.0 vs 20.0 MB for fastest)" in choice.reason


def test_equal_accuracy_and_size_ties_go_to_the_lower_median():
    fastest = contender("fastest", [1.0, 1.0, 1.0])
    other = contender("other", [1.0, 1.2, 1.2])
    choice = choose_candidate([other, fastest])
    assert choice is not None and choice.name == "fastest" and choice.tied == ["fastest", "other"]
    assert "lower median p50 than other" in choice.reason


def test_a_more_accurate_variant_never_as_fast_does_not_tie():
    fastest = contender("fastest", [1.0, 1.0, 1.0], accuracy=0.70)
    accurate = contender("accurate", [1.01, 1.02, 1.01], accuracy=0.95)
    choice = choose_candidate([fastest, accurate])
    assert choice is not None and choice.name == "fastest"


def test_a_single_variant_is_the_candidate():
    only = contender("only", [3.0, 2.0])
    choice = choose_candidate([only])
    assert choice is not None and choice.name == "only" and registration_order([only], choice) == ["only"]


def test_nothing_passing_gives_no_candidate():
    assert choose_candidate([]) is None
    assert registration_order([], None) == []


def test_rounds_must_align():
    with pytest.raises(ValueError):
        rounds_as_fast(contender("a", [1.0, 1.0]).timing, contender("b", [1.0]).timing)
