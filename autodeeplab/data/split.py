"""The seeded trainA / trainB split used by the architecture search (see docs/search.md)."""

from __future__ import annotations

import numpy as np
import torch

from autodeeplab.data.repeat import RepeatDataset


def split_indices(
    num_samples: int, seed: int = 0, fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, sorted index arrays covering ``range(num_samples)``.

    ``trainA`` (network weights) gets ``floor(fraction * n)`` samples, ``trainB``
    (architecture parameters) the rest. A pure function of its arguments.
    """
    if num_samples < 2:
        raise ValueError(
            f"need at least 2 samples to split into trainA and trainB, got {num_samples}"
        )
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(num_samples)
    n_a = min(max(1, int(fraction * num_samples)), num_samples - 1)
    return np.sort(perm[:n_a]), np.sort(perm[n_a:])


def search_split(
    dataset: torch.utils.data.Dataset, seed: int = 0, fraction: float = 0.5
) -> tuple[torch.utils.data.Subset, torch.utils.data.Subset]:
    """``(trainA, trainB)`` subsets of ``dataset`` from :func:`split_indices`.

    A :class:`~autodeeplab.data.repeat.RepeatDataset` is split over its distinct samples, and
    each half then holds every pass of its samples: no image is in both halves.
    """
    if isinstance(dataset, RepeatDataset):
        a, b = split_indices(dataset.base_length, seed, fraction)
        return torch.utils.data.Subset(dataset, dataset.expand(a)), torch.utils.data.Subset(
            dataset, dataset.expand(b)
        )
    a, b = split_indices(len(dataset), seed, fraction)  # type: ignore[arg-type]
    return torch.utils.data.Subset(dataset, a.tolist()), torch.utils.data.Subset(
        dataset, b.tolist()
    )
