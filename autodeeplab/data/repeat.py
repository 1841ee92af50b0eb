"""Several passes over a small training set per epoch (``data.repeat``).

On a folder of a few dozen images an epoch is a handful of steps, so per-epoch work (the
search's evaluation and genotype decoding, the cosine schedule's steps, checkpoints) dominates
and the schedules count in units that carry little meaning. :class:`RepeatDataset` makes one
epoch ``times`` passes over the samples instead, with no copy of the data::

    index r * n + i   ->   sample i of the wrapped set (pass r), n = len(dataset)

Every index is a distinct key for the engines' keyed augmentation (a generator seeded by
``(seed, epoch, index)``), so the ``times`` copies of a sample in one epoch get different,
reproducible random crops and flips, and exact resumption needs nothing new. The trainA /
trainB split of a search is drawn over the *distinct* samples and then expanded
(:meth:`RepeatDataset.expand`), so no image can land in both halves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from autodeeplab.data.base import SegmentationDataset, sample_rng


class RepeatDataset(torch.utils.data.Dataset):
    """``times`` passes over ``dataset``: ``len = times * len(dataset)``.

    Exposes what the engines read from a data set (``get``, ``load``, ``num_classes``,
    ``class_names``, ``in_channels``, ``palette``, ``ignore_index``, ``name``) by delegating to the wrapped one.
    """

    def __init__(self, dataset: SegmentationDataset, times: int) -> None:
        check_repeat(times)
        self.dataset = dataset
        self.times = times

    @property
    def base_length(self) -> int:
        """Number of distinct samples (the wrapped set's length)."""
        return len(self.dataset)

    def base_index(self, index: int) -> int:
        """The wrapped set's index of ``index`` (``index mod n``)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return index % self.base_length

    def expand(self, indices: Iterable[int]) -> list[int]:
        """All indices of this set that show the wrapped set's ``indices``: pass by pass."""
        base = [int(i) for i in indices]
        n = self.base_length
        if any(not 0 <= i < n for i in base):
            raise IndexError(f"indices must lie in 0..{n - 1}")
        return [r * n + i for r in range(self.times) for i in base]

    # -------------------------------------------------------------- the data set contract
    def __len__(self) -> int:
        return self.times * self.base_length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed ``(image, mask)`` of ``index`` (the wrapped sample)."""
        return self.dataset.load(self.base_index(index))

    def get(self, index: int, rng: np.random.Generator) -> tuple[Any, Any]:
        """The wrapped sample, transformed with the explicit generator ``rng``."""
        return self.dataset.get(self.base_index(index), rng)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        # keyed by the repeated index, so two passes draw different augmentations
        return self.get(index, sample_rng(index))

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names

    @property
    def in_channels(self) -> int:
        return self.dataset.in_channels

    @property
    def palette(self) -> np.ndarray:
        return self.dataset.palette

    @property
    def ignore_index(self) -> int:
        return self.dataset.ignore_index

    def __repr__(self) -> str:
        return f"RepeatDataset({self.dataset!r}, times={self.times})"


def check_repeat(times: Any) -> None:
    """Raise ``ValueError`` unless ``times`` is an integer >= 1."""
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError(f"data.repeat must be an integer >= 1, got {times!r}")


def repeat_dataset(dataset: SegmentationDataset, times: int) -> Any:
    """``dataset`` itself for ``times == 1`` (nothing changes), else a :class:`RepeatDataset`."""
    check_repeat(times)
    return dataset if times == 1 else RepeatDataset(dataset, times)
