"""Independent AUC and pAUC for the metric tests: written from the definitions, without
scikit-learn, so that fastasd.metrics (which calls scikit-learn) is checked against something
else.

* AUC: the rank statistic (Mann-Whitney U / (P N)): the share of (anomalous, normal) pairs whose
  anomaly score is higher, a tie counting one half.
* pAUC: the area under the ROC curve (straight segments between the points of the distinct
  thresholds, so tied scores give a diagonal segment) from false-positive rate 0 to ``max_fpr``,
  McClish-standardized: ``0.5 * (1 + (A - max_fpr**2 / 2) / (max_fpr - max_fpr**2 / 2))``.
"""
from __future__ import annotations


def rank_auc(labels, scores) -> float:
    """AUC of ``scores`` (higher = more anomalous) for ``labels`` (1/True = anomalous)."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def roc_points(labels, scores) -> list[tuple[float, float]]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    points = [(0.0, 0.0)]
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for y, s in zip(labels, scores) if y and s >= t)
        fp = sum(1 for y, s in zip(labels, scores) if not y and s >= t)
        points.append((fp / n_neg, tp / n_pos))
    return points


def mcclish_pauc(labels, scores, max_fpr: float = 0.1) -> float:
    """McClish-standardized partial AUC over false-positive rates [0, max_fpr]."""
    area = 0.0
    pts = roc_points(labels, scores)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # cut the segment at max_fpr (linear interpolation)
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    lo, hi = max_fpr ** 2 / 2, max_fpr
    return 0.5 * (1 + (area - lo) / (hi - lo))


def hmean(values) -> float:
    """Harmonic mean (no clamping: the test values are well above zero)."""
    values = list(values)
    return len(values) / sum(1.0 / v for v in values)


def amean(values) -> float:
    """Arithmetic mean."""
    values = list(values)
    return sum(values) / len(values)
