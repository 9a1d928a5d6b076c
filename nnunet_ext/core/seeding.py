"""Seeding nnU-Net trainers: ``SeedMixin`` and the helpers behind it.

nnU-Net v2 does not seed its training runs. ``SeedMixin`` seeds what nnU-Net lets a trainer seed,
from the environment variable ``nnUNet_ext_seed`` (wins when set, so that one trainer class can be run
with many seeds) or else the class attribute ``seed`` (``None``: nothing is seeded, stock behaviour):

>>> class nnUNetTrainerFD_seed3(SeedMixin, nnUNetTrainerFD):
...     seed = 3

What is seeded, and what nnU-Net leaves open:

* **Network initialisation.** nnU-Net builds the network in ``initialize()``. The mixin seeds Python's
  ``random``, numpy and torch (CPU and all CUDA devices) right before, so the initial weights depend only
  on the seed and the architecture: a method trainer that builds nnU-Net's own network (``nnUNetTrainerFD``)
  starts from exactly the weights of stock ``nnUNetTrainer`` with the same seed.
* **Training and validation batches, in-process loading** (``nnUNet_n_proc_DA=0``: nnU-Net uses
  batchgenerators' ``SingleThreadedAugmenter``). Sampling, cropping and augmentation use the global
  numpy / torch generators of the training process, which the train step also uses (e.g. FD draws random
  channels). The mixin therefore gives each loader its own generator state (Python, numpy, torch CPU),
  swapped in around every batch. The batch sequence then depends only on the seed, not on the trainer:
  two trainers with the same seed see the same batches.
* **Loading with workers** (``nnUNet_n_proc_DA`` > 0: ``NonDetMultiThreadedAugmenter``). Its workers take
  one seed each (``np.random.seed`` and ``torch.manual_seed`` in the worker); nnU-Net passes ``seeds=None``.
  The mixin passes seeds derived from the seed. Each worker's stream is then deterministic, but the order in
  which the workers' batches reach the trainer depends on timing (hence "NonDet"), so the batch order, and
  hence training, is not reproducible. Use ``nnUNet_n_proc_DA=0`` where exact reproducibility matters.
* **The train step** (e.g. FD's random channel choice, any dropout) uses the global generators, reseeded
  from the seed when the loaders are made, so it is deterministic for an uninterrupted run.
* **Resuming** (``nnUNetv2_train ... --c``). nnU-Net's checkpoint holds the weights, the optimiser, the
  grad scaler and the logs, not the generator states. A resumed run reseeds every stream from
  ``(seed, epoch it resumes at)``: reproducible for the same interruption point, but not identical to the
  uninterrupted run.
* **GPU kernels.** ``nnUNetv2_train`` sets ``cudnn.benchmark = True``, and several CUDA kernels are not
  deterministic. With ``nnUNet_ext_deterministic=1`` the mixin switches cuDNN to deterministic algorithms
  and asks torch for deterministic ones (``warn_only``); slower, and still not bitwise identical across
  GPUs or library versions.
* **DDP.** Data seeds are offset by the rank (each GPU draws its own batches); the initial weights are
  broadcast from rank 0 by DDP anyway.
* Seeding of the loaders applies to trainers that use ``nnUNetTrainer.get_dataloaders`` (nnU-Net's and
  nnunet_ext's); a trainer with its own loader code is told so in its training log.

Everything seeded is written to the training log.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import random
import zlib
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import torch

SEED_ENV = "nnUNet_ext_seed"
DETERMINISTIC_ENV = "nnUNet_ext_deterministic"


def _tag(t) -> int:
    return int(t) if isinstance(t, (int, np.integer)) else zlib.crc32(str(t).encode())


def derive_seed(seed: int, *tags) -> int:
    """A 32-bit seed for the stream named by ``tags`` (ints or strings), independent of the other streams."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(_tag(t) & 0xFFFFFFFF for t in tags)])
               .generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    seed = int(seed) & 0xFFFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RNGState = Tuple[Any, Any, torch.Tensor]


def get_rng_state() -> RNGState:
    """The state of the generators the data pipeline uses (Python, numpy, torch CPU)."""
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def set_rng_state(state: RNGState) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def fresh_rng_state(seed: int) -> RNGState:
    """The generator state right after ``seed_everything(seed)``, leaving the current state untouched."""
    outer = get_rng_state()
    try:
        seed_everything(seed)
        return get_rng_state()
    finally:
        set_rng_state(outer)


class IsolatedRNGIterator:
    """Wraps an iterator so that each ``next`` runs with the wrapper's own generator state.

    The global state is swapped out before and back in after each item, so the items depend only on the
    wrapper's seed, and the caller's random draws do not depend on how many items were drawn.
    Other attributes are those of the wrapped iterator.
    """

    def __init__(self, iterator, seed: int):
        self.iterator = iterator
        self.seed = int(seed)
        self._state = fresh_rng_state(seed)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        outer = get_rng_state()
        set_rng_state(self._state)
        try:
            return next(self.iterator)
        finally:
            self._state = get_rng_state()
            set_rng_state(outer)

    next = __next__

    def __getattr__(self, name):
        if name == "iterator":  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.iterator, name)


@contextlib.contextmanager
def seeded_augmenters(seed: int, *tags, module=None):
    """While active, the augmenters that nnU-Net's ``get_dataloaders`` creates are seeded from ``seed``.

    ``module`` (default: nnU-Net's ``nnUNetTrainer`` module) is where ``get_dataloaders`` looks up the
    ``SingleThreadedAugmenter`` and ``NonDetMultiThreadedAugmenter`` names; they are replaced for the
    duration by factories that wrap / seed what they create. The n-th augmenter made gets stream
    ``("loader", n, *tags)`` (n = 0: training, 1: validation). Yields a list that receives one line per
    seeded augmenter.
    """
    if module is None:
        from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as module
    made: list = []
    originals = {}

    def single(orig):
        def factory(*args, **kwargs):
            s = derive_seed(seed, "loader", len(made), *tags)
            made.append(f"loader {len(made)}: in-process, own generator state, seed {s}")
            return IsolatedRNGIterator(orig(*args, **kwargs), s)
        return factory

    def multi(orig):
        sig = inspect.signature(orig)

        def factory(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            n = int(bound.arguments["num_processes"])
            idx = len(made)
            seeds = [derive_seed(seed, "loader", idx, *tags, "worker", i) for i in range(n)]
            bound.arguments["seeds"] = seeds
            made.append(f"loader {idx}: {n} worker(s), worker seeds {seeds} (batch order still depends on timing)")
            return orig(*bound.args, **bound.kwargs)
        return factory

    for name, wrap in (("SingleThreadedAugmenter", single), ("NonDetMultiThreadedAugmenter", multi)):
        if hasattr(module, name):
            originals[name] = getattr(module, name)
            setattr(module, name, wrap(originals[name]))
    try:
        yield made
    finally:
        for name, orig in originals.items():
            setattr(module, name, orig)


def seed_from_env(default: Optional[int] = None) -> Optional[int]:
    """``$nnUNet_ext_seed`` as an int, else ``default``."""
    v = os.environ.get(SEED_ENV, "").strip()
    if not v:
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={v!r} is not an integer") from None


class SeedMixin:
    """Seeds initialisation, data loading and the train step of an nnU-Net trainer (see the module doc).

    Put it before the trainer class: ``class MyTrainer(SeedMixin, nnUNetTrainer)``.
    """

    #: used when ``$nnUNet_ext_seed`` is not set; ``None``: no seeding
    seed: Optional[int] = None

    def resolved_seed(self) -> Optional[int]:
        return seed_from_env(self.seed)

    def _rank(self) -> int:
        if getattr(self, "is_ddp", False):
            from torch import distributed as dist
            return dist.get_rank()
        return 0

    def initialize(self):
        s = self.resolved_seed()
        self.ext_seed = s  # lands in nnU-Net's debug.json
        if s is not None and not self.was_initialized:
            seed_everything(s)
            self.print_to_log_file(f"SeedMixin: seed {s}; python/numpy/torch seeded before the network is built")
        return super().initialize()

    def get_dataloaders(self):
        # the seed of initialize(): the run's seed, even if the environment changed since
        s = self.ext_seed if hasattr(self, "ext_seed") else self.resolved_seed()
        if s is None:
            return super().get_dataloaders()
        epoch, rank = int(self.current_epoch), self._rank()
        with seeded_augmenters(s, "epoch", epoch, "rank", rank) as made:
            loaders = super().get_dataloaders()
        # the train step's own draws (global generators): reseeded here, from (seed, epoch, rank)
        seed_everything(derive_seed(s, "step", epoch, rank))
        where = f"from epoch {epoch}" + (f", rank {rank}" if rank else "")
        if made:
            for line in made:
                self.print_to_log_file(f"SeedMixin: {line} ({where})")
        else:
            self.print_to_log_file("SeedMixin: this trainer makes its own data loaders; they are not seeded")
        return loaders

    def on_train_start(self):
        if os.environ.get(DETERMINISTIC_ENV, "").strip() not in ("", "0", "false", "False"):
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)
            self.print_to_log_file("SeedMixin: deterministic algorithms on (cudnn.benchmark off)")
        return super().on_train_start()
