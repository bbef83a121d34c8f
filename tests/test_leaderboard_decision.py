"""The decision in words: which pair the leaderboard names as the cheapest practically equivalent to the best."""

import numpy as np
import pandas as pd

from pipeline.evaluate.leaderboard import add_decision, decision_lines


def board(costs):
    names = [f"b{i}/c" for i in range(len(costs))]
    table = pd.DataFrame({"rank": range(1, len(costs) + 1), "backbone": [n.split("/")[0] for n in names],
                          "classifier": "c", "cv_accuracy": np.linspace(0.5, 0.45, len(costs))})
    result = {"p_best": np.full(len(costs), 1 / len(costs)), "rank_low": np.ones(len(costs), int),
              "rank_high": np.full(len(costs), len(costs)), "equivalent": np.array([True, True, True, False]),
              "selection": {"observed": 0.5, "corrected": 0.47, "corrected_ci95": [0.4, 0.55], "pairs": len(costs),
                            "method": "BBC-CV"}}
    priced = {n: {"ms_per_image": c, "images_per_second": 1000 / c if c else None} for n, c in zip(names, costs)}
    tests = {"pairs": {n: {} for n in names}}
    return add_decision(table, tests, result, names, priced, margin=0.01), tests


def test_the_cheapest_equivalent_pair_is_named_with_its_saving_and_a_cheaper_pair_outside_the_set_is_not():
    table, tests = board([40.0, 30.0, 3.0, 1.0])  # b3 is cheapest of all but not equivalent
    decision = tests["decision"]
    assert decision["cheapest_equivalent"] == "b2/c" and decision["equivalent"] == ["b0/c", "b1/c", "b2/c"]
    assert "b2/c: 3 ms per image" in decision["sentence"] and "13.3 times cheaper" in decision["sentence"]
    assert tests["pairs"]["b3/c"]["equivalent"] is False and table["equivalent"].tolist() == [True] * 3 + [False]
    assert any("Winner's curse" in line and "0.470 [0.400, 0.550]" in line for line in decision_lines(table, decision))


def test_costs_within_timing_noise_count_as_equal_and_the_better_ranked_pair_is_named():
    _, tests = board([33.6, 33.5, 33.55, 1.0])
    assert tests["decision"]["cheapest_equivalent"] == "b0/c"
    assert tests["decision"]["sentence"].startswith("The best pair, b0/c, is also among the cheapest")


def test_without_costs_no_pair_is_called_cheapest():
    _, tests = board([None, None, None, None])
    assert tests["decision"]["cheapest_equivalent"] is None and "no cost was measured" in tests["decision"]["sentence"]
