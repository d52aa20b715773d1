"""batches.isolate: the one "run the batch, split it on failure" rule of the model, detect and
verify stages and the `detect` command."""

from __future__ import annotations

import pytest

from batch_inpaint.batches import isolate


def test_a_batch_that_runs_is_run_once():
    calls = []

    def double(items):
        calls.append(list(items))
        return [2 * x for x in items]

    assert isolate(double, [1, 2, 3], lambda x, exc: None) == [2, 4, 6]
    assert calls == [[1, 2, 3]]
    assert isolate(double, [], lambda x, exc: None) == [] and len(calls) == 1  # nothing to run


def test_one_bad_item_costs_only_itself_in_halves():
    calls = []

    def run(items):
        calls.append(list(items))
        if 3 in items:
            raise ValueError("three is bad")
        return [x * 10 for x in items]

    out = isolate(run, [1, 2, 3, 4, 5], lambda x, exc: f"failed {x}: {exc}")
    assert out == [10, 20, "failed 3: three is bad", 40, 50]  # order kept
    assert calls == [[1, 2, 3, 4, 5], [1, 2], [3, 4, 5], [3], [4, 5]]  # halves, not one by one


def test_a_wrong_result_count_is_a_failure_and_on_split_runs_before_each_split():
    splits = []

    def run(items):
        return items[:1]  # one result, whatever the batch: wrong unless alone

    out = isolate(run, ["a", "b", "c"], lambda x, exc: type(exc).__name__,
                  on_split=lambda exc: splits.append(str(exc)))  # fmt: skip
    assert out == ["a", "b", "c"]
    assert splits == ["1 results for 3 inputs", "1 results for 2 inputs"]


def test_keyboard_interrupt_is_never_isolated():
    def run(items):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        isolate(run, [1, 2], lambda x, exc: None)
