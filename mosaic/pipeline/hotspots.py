"""Hotspots: clusters of the 2-D layout, each with a representative and a label.

HDBSCAN finds clusters of any shape; KMeans is the fallback when HDBSCAN finds
none, when a fixed count is asked for, or above ``HDBSCAN_MAX_ITEMS``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

HDBSCAN_MAX_ITEMS = 200_000
DEFAULT_MAX_CLUSTERS = 20


def find_clusters(xy: np.ndarray, n_clusters: int | None = None,
                  random_state: int = 0) -> np.ndarray:
    """Cluster labels (N,) int, -1 for noise. ``n_clusters=None`` means automatic."""
    n_items = len(xy)
    if n_items < 4:
        return np.zeros(n_items, dtype=np.int64)
    if n_clusters is None and n_items <= HDBSCAN_MAX_ITEMS:
        from sklearn.cluster import HDBSCAN

        min_size = max(5, n_items // 50)
        labels = HDBSCAN(min_cluster_size=min_size, copy=True).fit_predict(xy)
        if labels.max() >= 1:
            return _keep_largest(labels, DEFAULT_MAX_CLUSTERS)
    from sklearn.cluster import KMeans

    k = min(n_clusters or min(DEFAULT_MAX_CLUSTERS, max(2, int(np.sqrt(n_items / 50)))),
            n_items)
    return KMeans(n_clusters=k, n_init=3, random_state=random_state).fit_predict(xy)


def _keep_largest(labels: np.ndarray, limit: int) -> np.ndarray:
    sizes = Counter(labels[labels >= 0].tolist())
    keep = {label for label, _ in sizes.most_common(limit)}
    return np.where(np.isin(labels, list(keep)), labels, -1)


def describe_hotspots(
    labels: np.ndarray,
    xy: np.ndarray,
    positions: np.ndarray,
    categories: list[str | None] | None = None,
) -> list[dict]:
    """One dict per cluster, largest first: id, label, size, representative, row, col.

    The representative is the member nearest the cluster's centroid; the label
    is the most common non-empty category among members, else "Cluster N".
    """
    hotspots = []
    for number, cluster in enumerate(sorted(set(labels.tolist()) - {-1},
                                            key=lambda c: -int((labels == c).sum()))):
        members = np.flatnonzero(labels == cluster)
        centre = xy[members].mean(axis=0)
        representative = int(members[np.argmin(((xy[members] - centre) ** 2).sum(axis=1))])
        label = f"Cluster {number + 1}"
        if categories is not None:
            common = Counter(c for c in (categories[m] for m in members) if c).most_common(1)
            if common:
                label = common[0][0]
        hotspots.append({
            "id": number, "label": label, "size": int(len(members)),
            "representative": representative,
            "row": int(positions[representative, 0]), "col": int(positions[representative, 1]),
        })
    return hotspots
