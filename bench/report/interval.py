"""The uncertainty of a headline: its 95% Wilson score interval over the row's n images, and the
rule that tells which rows of a block are separated by it.

A headline is k robust images out of n, a binomial proportion. Its interval covers the sampling
of the images (another n images drawn from the same distribution); it does not cover the
randomness of an attack or of training. The Wilson score interval (Wilson, "Probable Inference,
the Law of Succession, and Statistical Inference", JASA 1927) holds every p that the score test
``|k/n - p| <= z sqrt(p (1 - p) / n)`` accepts::

    centre = (k + z²/2) / (n + z²)
    half   = z / (n + z²) * sqrt(k (n - k) / n + z²/4)

It stays inside [0, 1], its low end is 0 at k = 0 and its high end 1 at k = n, and its coverage
stays close to 95% for small n and for accuracies near 0 or 1, where the normal approximation
``k/n ± z sqrt(p(1-p)/n)`` collapses to a single point (Brown, Cai and DasGupta, "Interval
Estimation for a Binomial Proportion", Statistical Science 2001).

**Which rows are separated.** Row A is *above* row B when A's interval lies wholly above B's
(A's low end > B's high end). Among the N rows ranked together, a row can hold the places from
``1 + (rows above it)`` to ``N - (rows below it)`` (:func:`places`). The rule compares each pair
on its own; it does not chain overlaps, so a row is never tied with a row that it is separated
from only because both overlap a third. Two rows whose intervals overlap always share a place.
A single place means the row is separated from every other row. Non-overlap of two 95% intervals
is a stricter test than a 5% test of their difference.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from statistics import NormalDist
from typing import NamedTuple

LEVEL = 0.95
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)  # 1.95996...: the two-sided 95% normal quantile


class Interval(NamedTuple):
    """A proportion's interval, both ends in [0, 1] (NaN where there are no images)."""

    low: float
    high: float


def wilson(k: int, n: int, z: float = Z) -> Interval:
    """The Wilson score interval of ``k`` successes in ``n`` trials (95% for the default ``z``).

    Example: ``wilson(50, 100)`` is about ``(0.4038, 0.5962)``; ``wilson(0, 10)`` about
    ``(0.0, 0.2775)``.
    """
    if n <= 0:
        return Interval(math.nan, math.nan)
    z2 = z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4)
    return Interval(0.0 if k <= 0 else max(0.0, centre - half),
                    1.0 if k >= n else min(1.0, centre + half))


def places(intervals: Sequence[Interval]) -> list[tuple[int, int]]:
    """The places (best, worst; 1 is the top) each of ``intervals`` can hold among them: from 1
    plus the intervals wholly above it to their count minus the intervals wholly below it."""
    lows = sorted(i.low for i in intervals)
    highs = sorted(i.high for i in intervals)
    n = len(intervals)
    # above: the lows > a.high; below: the highs < a.low (two sorted lists: n log n, not n²)
    return [(1 + n - bisect_right(lows, a.high), n - bisect_left(highs, a.low))
            for a in intervals]


def place_label(best: int, worst: int) -> str:
    """A row's places as the tables show them: ``1`` or ``2–4``."""
    return str(best) if best == worst else f"{best}–{worst}"
