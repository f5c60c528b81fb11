"""batch-size's growth list: parsing, the size of every call, and advice on a plan that does not fit."""

from __future__ import annotations

import pytest

from deploy.pipeline import _calls_said
from deploy.waves import BatchSize, Timing, call_sizes, compressed, fitting, parse_batch_sizes, split

MAXIMUM = 10_000


@pytest.mark.parametrize(("text", "sizes"), [
    ("3", (BatchSize(count=3),)),
    ("1,5,10%,25%", (BatchSize(count=1), BatchSize(count=5), BatchSize(percent=10), BatchSize(percent=25))),
    (" 2 , 50% ", (BatchSize(count=2), BatchSize(percent=50))),
    ("0.5%", (BatchSize(percent=0.5),)),
    ("100%", (BatchSize(percent=100),)),
])
def test_counts_and_percentages_parse(text, sizes):
    assert parse_batch_sizes(text, MAXIMUM) == sizes


@pytest.mark.parametrize(("text", "words"), [
    ("0", "a call takes at least one tenant"),
    ("1,0", "'0': a call takes at least one tenant"),
    ("0%", "must be more than 0%"),
    ("150%", "at most 100%"),
    ("-3", "at least 1 tenant"),
    ("2.5", "a count of tenants is a whole number"),
    ("abc", "is neither a count of tenants (5) nor a percentage of the fleet (10%)"),
    ("1,,5", "comma-separated"),
    ("10001", "at most 10000 tenants a call"),
    (",".join(["1"] * 33), "at most 32 sizes"),
    ("１０", "is neither a count"),
])
def test_a_size_that_is_zero_over_100_percent_or_garbage_says_the_fix(text, words):
    with pytest.raises(ValueError, match=None) as caught:
        parse_batch_sizes(text, MAXIMUM)
    assert words in str(caught.value)


def test_the_last_size_repeats_and_the_last_call_takes_what_is_left():
    sizes = parse_batch_sizes("1,5,10%,25%", MAXIMUM)
    assert call_sizes(sizes, fleet=40, tenants=39) == [1, 5, 4, 10, 10, 9]  # 10% of 40 = 4, 25% = 10


def test_percentages_round_up_to_at_least_one_tenant():
    assert call_sizes(parse_batch_sizes("10%", MAXIMUM), fleet=1, tenants=1) == [1]
    assert call_sizes(parse_batch_sizes("1%", MAXIMUM), fleet=150, tenants=150) == [2] * 75
    assert call_sizes(parse_batch_sizes("33%", MAXIMUM), fleet=100, tenants=100) == [33, 33, 33, 1]


def test_max_batch_size_caps_every_call():
    assert call_sizes(parse_batch_sizes("1,50%", MAXIMUM), fleet=100, tenants=100, cap=20) == [1, 20, 20, 20, 20, 19]


def test_ten_thousand_tenants_take_few_calls_with_a_growth_list():
    sizes = call_sizes(parse_batch_sizes("1,10,1%,10%,25%", MAXIMUM), fleet=10_000, tenants=9_999)
    assert sizes == [1, 10, 100, 1000, 2500, 2500, 2500, 1388] and sum(sizes) == 9_999
    assert compressed(sizes) == "1, 10, 100, 1000, 2500 × 3, 1388"


def test_split_cuts_in_order():
    assert split(["a", "b", "c", "d", "e"], [1, 2, 2]) == (("a",), ("b", "c"), ("d", "e"))


def test_the_worst_case_counts_calls_bakes_the_soak_and_the_room_kept_for_a_rollback():
    timing = Timing(call=390, bake=60, soak=300, kept=630)
    assert timing.worst(5, canary=True) == 5 * 390 + 4 * 60 + 300 + 630
    assert timing.worst(5, canary=False) == 5 * 390 + 5 * 60 + 630
    assert timing.described(2, canary=True) == ("2 × 390 s (a call's worst case) + 1 × 60 s (batch-soak-seconds) + "
                                                "300 s (the canary's soak) + 630 s kept for a rollback")


def test_advice_names_a_batch_size_that_fits_or_the_timeout_that_would():
    timing = Timing(call=390, bake=0, soak=60, kept=0)
    sizes = parse_batch_sizes("25", MAXIMUM)
    advice = fitting(sizes, 1000, 999, 0, timing, available=3600, canary=True)
    assert advice == "batch-size: 25,14% fits (8 calls at most)"
    assert len(call_sizes(parse_batch_sizes("25,14%", MAXIMUM), 1000, 999)) <= 8
    assert len(call_sizes(parse_batch_sizes("25,13%", MAXIMUM), 1000, 999)) > 8  # the smallest that fits
    assert fitting(sizes, 1000, 999, 0, timing, available=500, canary=True) == \
        "no batch-size fits: batch-size: 100% needs timeout of at least 840 s"
    assert fitting(sizes, 1000, 999, 10, timing, available=3600, canary=True) == \
        "no batch-size fits: max-batch-size 10 makes at least 100 calls: batch-size: 100% needs timeout of at least " \
        "39450 s"


@pytest.mark.parametrize(("sizes", "canary", "said"), [
    ([], False, "no deploy call (every tenant already runs the build)"),
    ([1], True, "1 deploy call (canary 1)"),
    ([1], False, "1 deploy call (1 tenant)"),
    ([1, 2, 2, 1], True, "4 deploy calls (canary 1, then 2 × 2, 1 tenants)"),
])
def test_the_plan_line_reads_right_for_every_fleet(sizes, canary, said):
    assert _calls_said(sizes, canary) == said
