"""The rate plan: how each shard is coded, at one ladder rate or to a quality target.

A job has a default (``--rate``: a ladder index or a nominal bpp, as in ``oscar compress``;
or ``--target METRIC>=VALUE``: per image, the lowest rate whose decoded image meets it,
``oscar_core.target``) and optionally a rates file (``--rates-file``) of per-shard rules. The
file is either a JSON object or a plain ``pattern = value`` list (one rule per line, ``#``
comments)::

    {"shard-000000.tar": 2, "shard-0001*.tar": 0.05, "s3://bkt/hard/*": "ssimulacra2>=40"}

    # same rules, plain format
    shard-000000.tar = 2
    shard-0001*.tar  = 0.05
    s3://bkt/hard/*  = ssimulacra2>=40

A pattern is an exact shard name or an fnmatch glob; it is matched against the shard's file
name, or against the whole URL when it contains a ``/``. Exact names win over globs; among
globs the first listed wins. A value is a ladder index (an integer) or a target bpp (a number
with a decimal point), which selects the highest rate whose nominal bpp does not exceed it
(``RateLadder.at_most``), or a quality target ``METRIC>=VALUE`` (a JSON string). Everything
is checked when the plan is built, before any work.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from oscar_core import Rate, RateLadder
from oscar_core.target import Target

from . import storage
from .storage_base import parse_url

log = logging.getLogger(__name__)

_TARGET_RULE = re.compile(r"^(.+?)\s*=\s*([A-Za-z0-9-]+\s*>=.*)$")


# How one shard is coded: every image at one ladder rate, or each at the lowest rate meeting
# a quality target
Coding = Rate | Target


@dataclass(frozen=True)
class RateRule:
    pattern: str
    coding: Coding
    source: str | int | float  # the value as the user wrote it, for messages and the config


def shard_name(url: str) -> str:
    """The file name of a shard URL (``s3://b/in/000001.tar`` -> ``000001.tar``)."""
    return posixpath.basename(parse_url(url).key.rstrip("/"))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _matches(pattern: str, url: str) -> bool:
    """A pattern with a "/" is matched against the whole URL, else against the file name."""
    target = url if "/" in pattern else shard_name(url)
    return fnmatch.fnmatchcase(target, pattern) if _is_glob(pattern) else pattern == target


class RatePlan:
    """Shard -> Coding, from a default and ordered per-shard rules."""

    def __init__(self, ladder: RateLadder, default: Coding | None, rules: Iterable[RateRule] = ()):
        self.ladder = ladder
        self.default = default
        self.rules = tuple(rules)

    @classmethod
    def build(
        cls,
        ladder: RateLadder,
        rate: str | int | float | None,
        rates_file: str | None,
        target: str | None = None,
    ) -> RatePlan:
        """Validate ``--rate`` / ``--target`` and ``--rates-file`` against ``ladder``;
        raises ValueError."""
        if rate is not None and target is not None:
            raise ValueError("give --rate or --target, not both")
        default: Coding | None = None
        if rate is not None:
            default = ladder.resolve(rate)
        elif target is not None:
            default = Target.parse(target)
        rules: list[RateRule] = []
        if rates_file:
            try:
                text = storage.read_bytes(rates_file).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"rates file {rates_file}: not UTF-8 text") from None
            except OSError as exc:  # StorageError included: names the URL
                raise ValueError(f"rates file {rates_file}: cannot read: {exc}") from None
            entries = parse_rates_text(text, rates_file)
            for pattern, value in entries:
                rules.append(RateRule(pattern, _resolve_value(ladder, value, rates_file), value))
        if default is None and not rules:
            raise ValueError("no rate given: use --rate R (or --target T) and/or --rates-file F")
        return cls(ladder, default, rules)

    def rate_for(self, url: str) -> Coding:
        """How one shard is coded; ValueError when no rule matches and there is no default."""
        exact = [r for r in self.rules if not _is_glob(r.pattern)]
        globs = [r for r in self.rules if _is_glob(r.pattern)]
        for rule in exact + globs:  # exact names win; then the first matching glob
            if _matches(rule.pattern, url):
                return rule.coding
        if self.default is None:
            raise ValueError(
                f"shard {url} matches no pattern of the rates file and no --rate default is set"
            )
        return self.default

    def resolve_all(self, urls: list[str]) -> dict[str, Coding]:
        """Rates for every shard (fails on the first uncovered one); warns about rules that
        match no shard, which are usually typos."""
        rates = {url: self.rate_for(url) for url in urls}
        for rule in self.rules:
            if not any(_matches(rule.pattern, url) for url in urls):
                log.warning(
                    "rates file rule %r matches none of the %d shards", rule.pattern, len(urls)
                )
        return rates

    def to_dict(self) -> dict:
        return {
            "default": coding_dict(self.default) if self.default else None,
            "rules": [
                {"pattern": r.pattern, "value": r.source, **chosen_dict(r.coding)}
                for r in self.rules
            ],
        }


def coding_dict(coding: Coding) -> dict:
    """A coding in the job config: the rate's fields, or ``{"target": "psnr>=30"}``."""
    return coding.to_dict() if isinstance(coding, Rate) else {"target": str(coding)}


def chosen_dict(coding: Coding) -> dict:
    """What a job config lists per shard: ``{"rate_index": 2}`` or ``{"target": "psnr>=30"}``."""
    return {"rate_index": coding.index} if isinstance(coding, Rate) else {"target": str(coding)}


def parse_rates_text(text: str, origin: str = "<rates>") -> list[tuple[str, int | float | str]]:
    """Parse a rates file (JSON object or ``pattern = value`` lines) into ordered entries."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"rates file {origin}: invalid JSON: {exc}") from None
        entries = list(obj.items())
    else:
        entries = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            target = _TARGET_RULE.match(line)  # "pattern = psnr>=30": the value holds a "="
            if target:
                entries.append((target.group(1), target.group(2)))
                continue
            pattern, sep, value = line.rpartition("=")
            if not sep or not pattern.strip() or not value.strip():
                raise ValueError(
                    f'rates file {origin} line {lineno}: expected "pattern = value", got {line!r}'
                )
            entries.append((pattern.strip(), _number(value.strip(), f"{origin} line {lineno}")))
    if not entries:
        raise ValueError(f"rates file {origin}: no rules")
    for pattern, value in entries:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"rates file {origin}: empty pattern")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(
                f"rates file {origin}: value for {pattern!r} must be a ladder index (int), "
                f'a target bpp (float) or a quality target ("psnr>=30"), got {value!r}'
            )
        if isinstance(value, str) and ">=" not in value:
            raise ValueError(
                f"rates file {origin}: value for {pattern!r} must be a ladder index (int), "
                f'a target bpp (float) or a quality target ("psnr>=30"), got {value!r}'
            )
    return entries


def _number(text: str, where: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise ValueError(
            f"rates file {where}: {text!r} is neither a ladder index nor a bpp"
        ) from None


def _resolve_value(ladder: RateLadder, value: int | float | str, origin: str) -> Coding:
    try:
        if isinstance(value, str):
            return Target.parse(value)
        if isinstance(value, int):
            return ladder.resolve(value)
        return ladder.at_most(float(value))
    except ValueError as exc:
        raise ValueError(f"rates file {origin}: {exc}") from None
