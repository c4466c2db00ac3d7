"""The rate plan: default rate, rates files (JSON and plain), precedence, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oscar_core import get_config
from oscar_core.target import Target
from pipeline.rates import RatePlan, parse_rates_text

LADDER = get_config("oscar-tiny").rate_ladder()  # bpp 0.0019 0.0098 0.0313 0.043 0.0625 ...
SHARDS = [f"s3://bkt/in/shard-{i:06d}.tar" for i in range(4)] + ["s3://bkt/hard/shard-000000.tar"]


def plan_from(tmp_path: Path, text: str, rate: str | None = None) -> RatePlan:
    path = tmp_path / "rates"
    path.write_text(text)
    return RatePlan.build(LADDER, rate, str(path))


def test_default_rate_only():
    plan = RatePlan.build(LADDER, "2", None)
    assert {plan.rate_for(u).index for u in SHARDS} == {2}
    assert RatePlan.build(LADDER, "0.0313", None).default.index == 2


def test_json_rules_exact_beats_glob_and_first_glob_wins(tmp_path):
    rules = {
        "s3://bkt/hard/*": 6,  # a "/" matches the whole URL
        "shard-00000[01].tar": 7,  # a glob listed before the next one
        "shard-*.tar": 0.05,  # bpp target: highest rate <= 0.05 is index 3 (0.043)
        "shard-000001.tar": 1,  # an exact name wins over every glob
    }
    plan = plan_from(tmp_path, json.dumps(rules), rate="0")
    assert [plan.rate_for(u).index for u in SHARDS] == [7, 1, 3, 3, 6]
    assert plan.to_dict()["rules"][2] == {"pattern": "shard-*.tar", "value": 0.05, "rate_index": 3}


def test_plain_format(tmp_path):
    text = "# per-shard rates\nshard-000000.tar = 2\n\nshard-*.tar = 0.0625  # comment\n"
    plan = plan_from(tmp_path, text)
    assert [plan.rate_for(u).index for u in SHARDS[:2]] == [2, 4]


def test_uncovered_shard_without_default_is_an_error(tmp_path):
    plan = plan_from(tmp_path, '{"shard-000000.tar": 2}')
    with pytest.raises(ValueError, match="matches no pattern"):
        plan.resolve_all(SHARDS)


def test_unused_rule_warns(tmp_path, caplog):
    plan = plan_from(tmp_path, '{"nomatch-*.tar": 2}', rate="1")
    assert set(plan.resolve_all(SHARDS).values()) == {LADDER[1]}
    assert "matches none of the 5 shards" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 8}', "Invalid rate index"),
        ('{"a": 0.001}', "below the lowest rate"),
        ('{"a": "2"}', "must be a ladder index"),
        ('{"a": true}', "must be a ladder index"),
        ('{"a": 2', "invalid JSON"),
        ("{}", "no rules"),
        ("shard-0.tar 2", 'expected "pattern = value"'),
        ("shard-0.tar = two", "neither a ladder index nor a bpp"),
    ],
)
def test_bad_rates_files(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        plan_from(tmp_path, text, rate="1")


def test_bad_default_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="Invalid rate index"):
        RatePlan.build(LADDER, "9", None)
    with pytest.raises(ValueError, match="no rate given"):
        RatePlan.build(LADDER, None, None)
    with pytest.raises(ValueError, match="cannot read"):
        RatePlan.build(LADDER, "1", str(tmp_path / "missing.json"))


def test_parse_keeps_order():
    assert parse_rates_text("b = 1\na = 2.5\n") == [("b", 1), ("a", 2.5)]


def test_quality_targets_as_default_and_per_shard(tmp_path):
    text = "shard-000002.tar = psnr>=30\ns3://bkt/hard/* = ssimulacra2 >= 40\nshard-*.tar = 3\n"
    plan = plan_from(tmp_path, text)
    codings = plan.resolve_all(SHARDS)
    assert codings[SHARDS[2]] == Target("psnr", 30)
    assert codings[SHARDS[4]] == Target("ssimulacra2", 40)  # a "/" rule: the whole URL
    assert codings[SHARDS[1]] == LADDER[3]
    assert plan.to_dict()["rules"][0] == {
        "pattern": "shard-000002.tar",
        "value": "psnr>=30",
        "target": "psnr>=30",
    }
    json_plan = plan_from(tmp_path, json.dumps({"shard-000001.tar": "ms-ssim>=0.9"}), rate="1")
    assert json_plan.rate_for(SHARDS[1]) == Target("ms-ssim", 0.9)
    assert json_plan.rate_for(SHARDS[0]) == LADDER[1]
    default = RatePlan.build(LADDER, None, None, target="psnr>=28")
    assert default.rate_for(SHARDS[0]) == Target("psnr", 28)
    assert default.to_dict()["default"] == {"target": "psnr>=28"}


@pytest.mark.parametrize(
    ("rate", "target", "text", "message"),
    [
        ("1", "psnr>=30", None, "not both"),
        (None, "lpips>=0.1", None, "Invalid target metric"),
        ("1", None, '{"a": "psnr>=x"}', "is not a number"),
        ("1", None, "a = vmaf>=90", "Invalid target metric"),
    ],
)
def test_bad_targets(tmp_path, rate, target, text, message):
    with pytest.raises(ValueError, match=message):
        if text is None:
            RatePlan.build(LADDER, rate, None, target=target)
        else:
            plan_from(tmp_path, text, rate=rate)
