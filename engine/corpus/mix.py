"""Several corpora read as one, for training: `--corpus corpora/demo --corpus corpora/bandai:2`.

A `CorpusMix` offers the read methods the trainers use (`motion_ids`, `get_motion`, `annotations`,
`features`, `joints`) over several stores. Motion ids are global: the mix numbers the motions of the
first corpus, then the second, ... (`source_of(gid)` gives the corpus index and its own id). Each corpus
has a sampling weight: the share of training draws that come from it (`pair_weights`), whatever its size.

    with open_mix([CorpusSpec("corpora/demo"), CorpusSpec("corpora/bandai", 2.0)]) as mix:
        train_retrieval(mix, "runs/mixed", config)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.corpus.types import Annotation, CorpusError, Motion


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus of a training mix and its sampling weight (> 0)."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> CorpusSpec:
        """'DIR' or 'DIR:WEIGHT' (the weight is what follows the last ':', when it is a number)."""
        head, sep, tail = str(text).rpartition(":")
        if sep and head:
            try:
                w = float(tail)
            except ValueError:
                return cls(Path(text), 1.0)  # a ':' that is part of the name
            return cls(Path(head), cls._weight(w, text))
        return cls(Path(text), 1.0)

    @staticmethod
    def _weight(w: float, text: str) -> float:
        if not np.isfinite(w) or w <= 0:
            raise CorpusError(f"--corpus {text}", f"sampling weight {w} must be a positive number")
        return w

    def to_dict(self) -> dict:
        return {"path": str(self.path), "weight": self.weight}


class CorpusMix:
    """Read-only union of opened stores with global motion ids (see the module docstring)."""

    def __init__(self, stores: Sequence, weights: Sequence[float], names: Sequence[str] | None = None):
        if not stores or len(stores) != len(weights):
            raise ValueError("a mix needs one weight per store, and at least one store")
        self.stores = list(stores)
        self.weights = [float(w) for w in weights]
        self.names = list(names) if names is not None else [str(getattr(s, "dir", i)) for i, s in enumerate(stores)]
        self._local: list[tuple[int, int]] = []  # gid -> (store index, its motion id)
        self._gid: dict[tuple[int, int], int] = {}
        for si, s in enumerate(self.stores):
            for mid in s.motion_ids():
                self._gid[(si, mid)] = len(self._local)
                self._local.append((si, mid))

    @property
    def dir(self) -> str:
        return " + ".join(self.names)

    def source_of(self, gid: int) -> tuple[int, int]:
        try:
            return self._local[int(gid)]
        except IndexError:
            raise KeyError(f"no motion with id {gid} in the mix") from None

    def motion_ids(self, split: str | None = None, source: str | None = None) -> list[int]:
        return [self._gid[(si, mid)] for si, s in enumerate(self.stores)
                for mid in s.motion_ids(split=split, source=source)]

    def get_motion(self, motion_id: int, arrays: bool = True) -> Motion:
        si, mid = self.source_of(motion_id)
        m = self.stores[si].get_motion(mid, arrays=arrays)
        m.motion_id = int(motion_id)
        return m

    def annotations(self, motion_id: int) -> list[Annotation]:
        si, mid = self.source_of(motion_id)
        return self.stores[si].annotations(mid)

    def features(self, motion_id: int) -> np.ndarray:
        si, mid = self.source_of(motion_id)
        return self.stores[si].features(mid)

    def joints(self, motion_id: int) -> np.ndarray:
        si, mid = self.source_of(motion_id)
        return self.stores[si].joints(mid)

    def pair_weights(self, motion_ids: Sequence[int], groups: Sequence[str | None] | None = None,
                     balance: float = 0.0) -> np.ndarray:
        """Sampling probabilities of training items given by their motions' global ids: each corpus gets
        its weight's share of the draws, spread over its items as `group_weights` says; sums to 1."""
        src = np.array([self.source_of(g)[0] for g in motion_ids], dtype=np.int64)
        return group_weights(src, self.weights, groups, balance)

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def __enter__(self) -> CorpusMix:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_mix(specs: Sequence[CorpusSpec], url: str | None = None) -> CorpusMix:
    """Open every corpus of the mix (each must exist); a missing one is a CorpusError naming it."""
    from engine.corpus.store import CorpusStore

    stores = []
    try:
        for sp in specs:
            if not Path(sp.path).is_dir():
                raise CorpusError(str(sp.path), "no such corpus directory")
            stores.append(CorpusStore.open(os.fspath(sp.path), url=url, create=False))
    except BaseException:
        for s in stores:
            s.close()
        raise
    return CorpusMix(stores, [sp.weight for sp in specs], [str(sp.path) for sp in specs])


def label_group(label: str | None) -> str | None:
    """The part of a label key (`engine.corpus.sentences.label_key`) that sampling balances over: the
    content with its side, without the style ('wave-left-hand|happy' -> 'wave-left-hand'), or the action."""
    return None if label is None else label.split("|")[0]


def group_weights(sources: np.ndarray, weights: Sequence[float], groups: Sequence[str | None] | None = None,
                  balance: float = 0.0) -> np.ndarray:
    """Sampling probabilities of n items (sums to 1). `sources[i]`: the corpus of item i, whose share of the
    draws is its `weights` entry over the present corpora' total. Within a corpus an item weighs
    `n_g ** -balance`, n_g being how many of that corpus's items share its group (`groups[i]`; items with
    None form one group): 0 spreads a corpus evenly over its items, 1 gives each group an equal share, so a
    content with 10 takes is drawn as often as one with 200."""
    sources = np.asarray(sources, dtype=np.int64)
    if balance < 0 or not np.isfinite(balance):
        raise ValueError(f"label balance must be a finite number >= 0, got {balance!r}")
    if groups is not None and len(groups) != len(sources):
        raise ValueError(f"{len(groups)} group labels for {len(sources)} items")
    counts = np.bincount(sources, minlength=len(weights)).astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)
    present = counts > 0
    share = np.where(present, w, 0.0) / w[present].sum()
    item = np.ones(len(sources))
    if groups is not None and balance > 0:
        keys = [(int(s), g) for s, g in zip(sources, groups)]
        size: dict[tuple[int, str | None], int] = {}
        for k in keys:
            size[k] = size.get(k, 0) + 1
        item = np.array([size[k] ** -balance for k in keys])
    mass = np.bincount(sources, weights=item, minlength=len(weights))
    return share[sources] * item / mass[sources]


def sampling_weights(store, motion_ids: Sequence[int], labels: Sequence[str | None],
                     balance: float = 0.0) -> np.ndarray | None:
    """The trainers' sampling probabilities of their items (motion ids, label keys): a mix's corpus weights
    and the label balance (`group_weights`); None when neither applies (every item once per epoch)."""
    is_mix = len(getattr(store, "stores", ())) > 1
    if not motion_ids or (not is_mix and balance == 0):
        return None
    groups = [label_group(lb) for lb in labels]
    if is_mix:
        return store.pair_weights(motion_ids, groups, balance)
    return group_weights(np.zeros(len(motion_ids), dtype=np.int64), [1.0], groups, balance)


def sampling_order(rng: np.random.Generator, n: int, probs: np.ndarray | None) -> np.ndarray:
    """One epoch's item order: a permutation when `probs` is None (every item once), else n draws with
    replacement from `probs` (the mix's weights)."""
    if probs is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=probs)
