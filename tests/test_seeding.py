"""SeedMixin (same seed: same initial weights and batches; other seed: different) and the benchmark statistics."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from nnunet_ext.benchmark.stats import bootstrap_ci, mean_sd, paired_case_differences
from nnunet_ext.core.seeding import (SEED_ENV, IsolatedRNGIterator, SeedMixin, derive_seed, seed_everything,
                                     seeded_augmenters)


# ---- pure helpers ---------------------------------------------------------------------------------
def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed(0, "loader", 0) == derive_seed(0, "loader", 0)
    seeds = {derive_seed(s, "loader", i) for s in range(4) for i in range(2)}
    assert len(seeds) == 8
    assert all(0 <= s < 2 ** 32 for s in seeds)


def test_isolated_iterator_ignores_the_callers_draws():
    def stream():
        while True:
            yield (random.random(), float(np.random.rand()), float(torch.rand(1)))

    a = IsolatedRNGIterator(stream(), 7)
    b = IsolatedRNGIterator(stream(), 7)
    first_a = [next(a) for _ in range(3)]
    seed_everything(123)
    outer = (random.random(), float(np.random.rand()))
    first_b = []
    for _ in range(3):
        np.random.rand(11), torch.rand(5), random.random()  # the "train step" draws in between
        first_b.append(next(b))
    assert first_a == first_b
    c = IsolatedRNGIterator(stream(), 8)
    assert next(c) != first_a[0]
    # the wrapper leaves the caller's generators where they were
    seed_everything(123)
    next(a)
    assert (random.random(), float(np.random.rand())) == outer


def test_seeded_augmenters_pass_worker_seeds():
    class FakeNonDet:
        def __init__(self, data_loader, transform, num_processes, num_cached=2, seeds=None, pin_memory=False,
                     wait_time=0.02):
            self.seeds = seeds

    class FakeSingle:
        def __init__(self, data_loader, transform):
            self.it = iter(data_loader)

        def __next__(self):
            return next(self.it)

    class Mod:
        NonDetMultiThreadedAugmenter = FakeNonDet
        SingleThreadedAugmenter = FakeSingle

    with seeded_augmenters(5, "epoch", 0, module=Mod) as made:
        tr = Mod.NonDetMultiThreadedAugmenter(data_loader=None, transform=None, num_processes=3, seeds=None)
        val = Mod.SingleThreadedAugmenter([1, 2], None)
    assert Mod.NonDetMultiThreadedAugmenter is FakeNonDet and Mod.SingleThreadedAugmenter is FakeSingle
    assert tr.seeds == [derive_seed(5, "loader", 0, "epoch", 0, "worker", i) for i in range(3)]
    assert isinstance(val, IsolatedRNGIterator) and next(val) == 1
    assert len(made) == 2


# ---- bootstrap ------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_true_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    true_mean = 0.3
    widths = []
    for n in (20, 80, 320, 1280):
        x = rng.normal(true_mean, 1.0, size=n)
        mean, lo, hi = bootstrap_ci(x)
        assert lo <= mean <= hi
        assert lo <= true_mean <= hi, (n, lo, hi)
        # about the normal-theory interval 2 * 1.96 / sqrt(n)
        assert 0.7 < (hi - lo) / (2 * 1.96 * x.std(ddof=1) / np.sqrt(n)) < 1.3
        widths.append(hi - lo)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[0] / widths[-1] > 5  # ~ sqrt(64) = 8


def test_bootstrap_ci_fixed_seed_and_edge_cases():
    x = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert bootstrap_ci(x) == bootstrap_ci(x)
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert all(np.isnan(v) for v in bootstrap_ci([np.nan, np.inf]))
    m, lo, hi = bootstrap_ci([1.0, np.nan, 3.0], max_chunk_elements=10)  # tiny chunks: same estimator
    assert m == 2.0 and 1.0 <= lo <= hi <= 3.0
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2)), 2)
    assert mean_sd([4.0]) == (4.0, 0.0, 1)


def test_paired_differences_pair_by_case_and_seed():
    rows = []
    for seed in (0, 1):
        for case, ref, new in (("a", 0.5, 0.7), ("b", 0.6, 0.5)):
            rows.append({"trainer": "ref", "seed": seed, "case": case, "class": "1", "dice": ref + seed * 0.1})
            rows.append({"trainer": "new", "seed": seed, "case": case, "class": "1", "dice": new + seed * 0.1})
    rows.append({"trainer": "new", "seed": 0, "case": "c", "class": "1", "dice": 0.9})  # unpaired: left out
    d = paired_case_differences(rows, "new", "ref", "dice")
    assert set(d) == {"a", "b"}
    assert d["a"] == pytest.approx(0.2) and d["b"] == pytest.approx(-0.1)


# ---- real nnU-Net trainers on the synthetic 2D dataset --------------------------------------------
@pytest.fixture
def trainer_factory(dataset2d, nnunet_env, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.fd.trainer import nnUNetTrainerFD

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, nnunet_env[k])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "false")
    from pathlib import Path
    pre = Path(nnunet_env["nnUNet_preprocessed"]) / dataset2d["name"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())

    class SeededStock(SeedMixin, nnUNetTrainer):
        pass

    class SeededFD(SeedMixin, nnUNetTrainerFD):
        pass

    made = []

    def make(seed, kind="stock"):
        monkeypatch.setenv(SEED_ENV, str(seed))
        cls = SeededStock if kind == "stock" else SeededFD
        t = cls(plans={**plans, "continue_training": False}, configuration="2d", fold=0, dataset_json=dataset_json, device=torch.device("cpu"))
        t.initialize()
        made.append(t)
        return t

    yield make
    for t in made:
        for dl in (getattr(t, "dataloader_train", None), getattr(t, "dataloader_val", None)):
            if dl is not None and hasattr(dl, "_finish"):
                dl._finish()


def _weights(t):
    return {k: v.detach().clone() for k, v in t.network.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _first_batches(t, n=2):
    dl_tr, _ = t.get_dataloaders()
    out = []
    for _ in range(n):
        out.append(next(dl_tr)["data"].clone())
        torch.rand(7), np.random.rand(3)  # what a train step might draw: must not shift the data stream
    return out


def test_same_seed_same_init_and_batches_other_seed_differs(trainer_factory):
    a, b, c = trainer_factory(0), trainer_factory(0), trainer_factory(1)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert _same(wa, wb)
    assert not _same(wa, wc)
    ba, bb, bc = _first_batches(a), _first_batches(b), _first_batches(c)
    assert all(torch.equal(x, y) for x, y in zip(ba, bb))
    assert not torch.equal(ba[0], bc[0])


def test_stock_and_fd_start_from_the_same_weights_and_batches(trainer_factory):
    stock, fd = trainer_factory(3, "stock"), trainer_factory(3, "fd")
    assert _same(_weights(stock), _weights(fd))
    assert all(torch.equal(x, y) for x, y in zip(_first_batches(stock), _first_batches(fd)))
