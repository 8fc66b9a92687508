"""k-means in torch: k-means++ seeding and Lloyd iterations, deterministic given a seed.

Used to fit the centroids of the ``speech_units`` tokenizer. Every random choice (the
k-means++ draws) comes from one ``torch.Generator`` seeded by the caller, and an empty
cluster is re-seeded with the point farthest from its centroid (no randomness), so the
same data and seed give the same centroids. Distances are computed in chunks as
``|x|^2 - 2 x.c + |c|^2`` so memory stays ``chunk x k`` whatever the number of points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmpretrain.errors import UserError

CHUNK = 8192
"""Points per distance block (memory is ``CHUNK x k`` floats)."""


@dataclass(frozen=True)
class KMeansResult:
    """Fitted centroids and how the fit went."""

    centroids: torch.Tensor
    """``[k, D]`` float32."""
    inertia: float
    """Sum of squared distances of the points to their nearest centroid."""
    iterations: int
    """Lloyd iterations run."""
    converged: bool
    """The centroid shift fell to ``tol`` before ``max_iter``."""
    reseeded: int
    """Empty clusters re-seeded over all iterations."""


def nearest_centroid(
    points: torch.Tensor, centroids: torch.Tensor, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid of each point ``[N]`` (int64; ties go to the lower
    index) and the squared distance to it ``[N]`` (float32, clamped at 0)."""
    points = points.float()
    centroids = centroids.float()
    c_norm = (centroids * centroids).sum(dim=1)
    labels, dists = [], []
    for block in points.split(chunk):
        d = (block * block).sum(dim=1, keepdim=True) - 2.0 * block @ centroids.T + c_norm
        best, index = d.min(dim=1)
        labels.append(index)
        dists.append(best.clamp(min=0.0))
    if not labels:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(labels), torch.cat(dists)


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: the first centroid uniformly, each next one drawn with probability
    proportional to the squared distance to the nearest centroid chosen so far."""
    count = points.shape[0]
    first = int(torch.randint(count, (1,), generator=generator))
    centroids = [points[first]]
    closest = nearest_centroid(points, points[first : first + 1])[1].double()
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0:
            index = int(torch.multinomial(closest / total, 1, generator=generator))
        else:  # every point sits on a centroid already (fewer distinct points than k)
            index = int(torch.randint(count, (1,), generator=generator))
        centroids.append(points[index])
        new = nearest_centroid(points, points[index : index + 1])[1].double()
        closest = torch.minimum(closest, new)
    return torch.stack(centroids).float()


def _update(
    points: torch.Tensor, labels: torch.Tensor, dists: torch.Tensor, k: int
) -> tuple[torch.Tensor, int]:
    """Mean of each cluster's points; an empty cluster takes the point farthest from its
    centroid that no other re-seeded cluster took (deterministic). Returns the centroids and
    how many were re-seeded."""
    dim = points.shape[1]
    sums = torch.zeros(k, dim, dtype=torch.float64).index_add_(0, labels, points.double())
    counts = torch.bincount(labels, minlength=k)
    centroids = (sums / counts.clamp(min=1)[:, None]).float()
    empty = torch.nonzero(counts == 0).flatten()
    if len(empty):
        farthest = torch.sort(dists, descending=True, stable=True).indices[: len(empty)]
        centroids[empty] = points[farthest].float()
    return centroids, len(empty)


def fit_kmeans(
    points: torch.Tensor,
    k: int,
    seed: int,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> KMeansResult:
    """Fit ``k`` centroids to ``points [N, D]``: k-means++ seeding from a generator seeded
    with ``seed``, then full-batch Lloyd iterations until the summed squared centroid shift
    is at most ``tol`` times the mean per-dimension variance of the points (sklearn's
    relative tolerance), or ``max_iter`` iterations."""
    if points.ndim != 2:
        raise ValueError(f"points must be [N, D], got shape {tuple(points.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if points.shape[0] < k:
        raise UserError(
            f"k-means needs at least k={k} points (frames), got {points.shape[0]}: read more audio or lower k"
        )
    points = points.float().contiguous()
    generator = torch.Generator().manual_seed(seed)
    centroids = kmeans_plus_plus(points, k, generator)
    threshold = tol * float(points.double().var(dim=0, correction=0).mean())
    iterations, converged, reseeded = 0, False, 0
    labels, dists = nearest_centroid(points, centroids)
    while iterations < max_iter and not converged:
        iterations += 1
        updated, empty = _update(points, labels, dists, k)
        reseeded += empty
        shift = float(((updated - centroids).double() ** 2).sum())
        centroids = updated
        labels, dists = nearest_centroid(points, centroids)
        converged = shift <= threshold and not empty
    inertia = float(dists.double().sum())
    return KMeansResult(centroids, inertia, iterations, converged, reseeded)
