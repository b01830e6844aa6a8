"""The retraining policy: when the monitor's snapshots say the champion should be retrained.

A :class:`Policy` is a list of rules over snapshot metrics plus the guards that keep a
noisy window from firing: a minimum of labelled predictions (quality rules) and of
predictions (drift rules) behind a value, a number of consecutive snapshots in breach, and
a cooldown after a firing. A rule breaches when its value is above ``above``, below
``below``, or more than ``drop`` under the champion's own holdout value (``baseline``, from
the registry). An AUC ``drop`` must also hold with ``confidence`` (one-sided): the live AUC
must sit under ``holdout - drop`` by more than ``z`` standard errors of the difference
(Hanley-McNeil for the live window and for the holdout), since a live window of 1,000
labels holds only some 60 positives at a 6 % base rate, and the holdout's AUC is an
estimate too: without it the default rule fired on a stable skewed stream.
``feature: "*"`` makes a drift rule apply to every feature (and the score), each with its
own streak. :class:`Trigger` applies a policy to one snapshot after another
and says when it fires, with the reason and the values that fired it; its state snapshots
for checkpoints.

The defaults: PSI of any feature or the score above 0.25 (the "significant" band), or live
AUC more than 0.05 under the champion's holdout AUC at 95 % confidence, for 3 snapshots
in a row, over at least 1,000 labelled predictions / 2,000 predictions, at most once an
hour.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

import msgspec
import numpy as np

from monitoring.drift import DRIFT_METRICS, PSI_NOISE
from monitoring.quality import QUALITY_METRICS, auc_standard_error
from monitoring.snapshot import MetricRow

ANY_FEATURE = "*"
HOLDOUT_SAMPLES = "holdout_samples"  # the baseline's key for the rows behind the holdout


@dataclass(frozen=True)
class Rule:
    """One condition: ``metric`` (of ``feature``, ``"*"`` for any) breaches its bound."""

    metric: str
    feature: str | None = None
    above: float | None = None
    below: float | None = None
    drop: float | None = None  # breach when value < baseline[metric] - drop

    def __post_init__(self) -> None:
        if self.metric not in (*QUALITY_METRICS, *DRIFT_METRICS):
            raise ValueError(f"unknown metric {self.metric!r}")
        if (self.above, self.below, self.drop).count(None) != 2:
            raise ValueError(f"rule on {self.metric}: give exactly one of above, below, drop")
        if (self.metric in DRIFT_METRICS) != (self.feature is not None):
            raise ValueError(f"{self.metric}: drift rules name a feature (or '*'), others not")

    def breached(self, value: float, baseline: Mapping[str, float], slack: float = 0.0) -> bool:
        """Whether ``value`` breaches the rule (NaN never does: no verdict without data);
        a ``drop`` must exceed ``drop + slack`` (the noise allowance)."""
        if value != value or slack != slack:
            return False
        if self.above is not None:
            return value > self.above
        if self.below is not None:
            return value < self.below
        base = baseline.get(self.metric)
        return base is not None and value < base - (self.drop or 0.0) - slack

    def describe(self) -> str:
        """The rule as a person reads it."""
        what = self.metric if self.feature is None else f"{self.metric}({self.feature})"
        if self.above is not None:
            return f"{what} > {self.above:g}"
        if self.below is not None:
            return f"{what} < {self.below:g}"
        return f"{what} < holdout - {self.drop:g}"


@dataclass(frozen=True)
class Policy:
    """The rules and the guards (see the module docstring for the defaults)."""

    rules: tuple[Rule, ...] = (
        Rule("psi", ANY_FEATURE, above=0.25),
        Rule("auc", drop=0.05),
    )
    min_labelled: int = 1000
    min_predictions: int = 2000
    confidence: float = 0.95  # of an AUC drop, one-sided (0: the point values alone)
    consecutive: int = 3
    cooldown_ms: int = 3_600_000

    @staticmethod
    def from_mapping(raw: Mapping[str, object]) -> Policy:
        """From settings or a YAML file: ``{rules: [{metric, feature, above|below|drop}],
        min_labelled, min_predictions, consecutive, cooldown_s}``; unknown keys refused."""
        known = {f.name for f in fields(Policy)} - {"cooldown_ms"} | {"cooldown_s"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown policy keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs: dict[str, object] = {
            k: v for k, v in raw.items() if k not in ("rules", "cooldown_s")
        }
        if "rules" in raw:
            kwargs["rules"] = tuple(Rule(**r) for r in raw["rules"])  # type: ignore[attr-defined]
        if "cooldown_s" in raw:
            kwargs["cooldown_ms"] = int(float(raw["cooldown_s"]) * 1000)  # type: ignore[arg-type]
        policy = Policy(**kwargs)  # type: ignore[arg-type]
        if policy.consecutive < 1 or policy.min_labelled < 0 or policy.min_predictions < 0:
            raise ValueError("consecutive must be >= 1 and the minimums >= 0")
        if not 0 <= policy.confidence < 1:
            raise ValueError(f"confidence must be in [0, 1), got {policy.confidence}")
        return policy


@dataclass(frozen=True)
class Fired:
    """A retraining request: why, and the values that fired it."""

    time_ms: int
    model_version: str
    reason: str
    values: dict[str, float]


class _TriggerState(msgspec.Struct):
    streaks: dict[str, int]
    last_fired_ms: int | None


@dataclass
class Trigger:
    """A :class:`Policy` applied to the champion's snapshots, one after another."""

    policy: Policy = field(default_factory=Policy)
    streaks: dict[str, int] = field(default_factory=dict)  # "rule|feature" -> snapshots
    last_fired_ms: int | None = None

    def observe(
        self, rows: Iterable[MetricRow], champion: str, baseline: Mapping[str, float]
    ) -> Fired | None:
        """Take one snapshot's rows; a :class:`Fired` when the policy fires on it."""
        p = self.policy
        mine = [row for row in rows if row.model_version == champion]
        slack = self._auc_slack(mine, baseline)
        noise = {row.feature: row.value for row in mine if row.metric == PSI_NOISE}
        breaches: dict[str, float] = {}
        for row in mine:
            enough = p.min_predictions if row.metric in DRIFT_METRICS else p.min_labelled
            if row.samples < enough:
                continue
            for rule in p.rules:
                if rule.metric != row.metric or rule.feature not in (ANY_FEATURE, row.feature):
                    continue
                allowance = slack if rule.metric == "auc" and rule.drop is not None else 0.0
                if rule.metric == "psi" and not row.value > noise.get(row.feature, 0.0):
                    continue  # no more than a stable stream reaches by chance
                if rule.breached(row.value, baseline, allowance):
                    feature = f"({row.feature})" if row.feature is not None else ""
                    breaches[f"{rule.describe()}|{row.metric}{feature}"] = row.value
        self.streaks = {key: self.streaks.get(key, 0) + 1 for key in breaches}
        ready = {k: v for k, v in breaches.items() if self.streaks[k] >= p.consecutive}
        if not ready:
            return None
        time_ms = max(row.time_ms for row in mine)
        if self.last_fired_ms is not None and time_ms - self.last_fired_ms < p.cooldown_ms:
            return None
        self.last_fired_ms = time_ms
        self.streaks = {}
        reason = "; ".join(
            f"{key.split('|')[1]} = {value:.4g} breached {key.split('|')[0]} for "
            f"{p.consecutive} snapshots"
            for key, value in sorted(ready.items())
        )
        return Fired(time_ms, champion, reason, {k.split("|")[1]: v for k, v in ready.items()})

    def _auc_slack(self, mine: list[MetricRow], baseline: Mapping[str, float]) -> float:
        """``z`` standard errors of live AUC minus holdout AUC (0 at confidence 0; NaN
        when either side's classes are unknown: no verdict)."""
        if self.policy.confidence <= 0:
            return 0.0
        model = {row.metric: row for row in mine if row.feature is None}
        live, rate = model.get("auc"), model.get("positive_rate")
        if live is None or rate is None:
            return float("nan")
        positives = round(rate.value * rate.samples)
        se_live = auc_standard_error(live.value, positives, rate.samples - positives)
        held, held_rate = baseline.get("auc"), baseline.get("positive_rate")
        held_n = int(baseline.get(HOLDOUT_SAMPLES, 0))
        if held is None or held_rate is None or held_n <= 0:
            return float("nan")
        held_pos = round(held_rate * held_n)
        se_held = auc_standard_error(held, held_pos, held_n - held_pos)
        return _z(self.policy.confidence) * float(np.hypot(se_live, se_held))

    def snapshot(self) -> bytes:
        """The streaks and the last firing, for a checkpoint."""
        return msgspec.msgpack.encode(_TriggerState(self.streaks, self.last_fired_ms))

    @staticmethod
    def restore(policy: Policy, data: bytes) -> Trigger:
        """The trigger a :meth:`snapshot` was taken of, under ``policy``."""
        s = msgspec.msgpack.decode(data, type=_TriggerState)
        return Trigger(policy, dict(s.streaks), s.last_fired_ms)


def _z(confidence: float) -> float:
    """The one-sided standard normal quantile of ``confidence``."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(confidence)
