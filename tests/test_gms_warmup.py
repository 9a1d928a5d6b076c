"""GMS's learning-rate schedule as nnU-Net drives it: the optimiser and scheduler built by
``nnUNetTrainerGMS.configure_optimizers``, stepped by nnU-Net's own ``on_train_epoch_start`` (0-based
``current_epoch``), and the lr read from the optimiser the epoch then trains with. W = 5: the authors' per-epoch
values (0, 0.25, 0.5, 0.75, 1.0, 1.0 x base in epochs 1-6, then their cosine); W = 0 as before the warm-up fix;
W = 1 (one epoch at lr 0)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.errors import UserError
from nnunet_ext.gms.trainer import WarmupCosineLR, nnUNetTrainerGMS

BASE = 2e-3


def _fake_trainer(num_epochs: int, warmup=None):
    """The attributes that configure_optimizers and nnU-Net's on_train_epoch_start use, around a tiny network."""
    logged = []
    t = SimpleNamespace(network=torch.nn.Linear(3, 2), initial_lr=BASE, weight_decay=0.01, num_epochs=num_epochs,
                        gms_warmup_epochs=nnUNetTrainerGMS.gms_warmup_epochs if warmup is None else warmup,
                        current_epoch=0, print_to_log_file=lambda *a, **k: None,
                        logger=SimpleNamespace(log=lambda key, value, epoch: logged.append((key, value, epoch))))
    t.optimizer, t.lr_scheduler = nnUNetTrainerGMS.configure_optimizers(t)
    t.logged = logged
    return t


def _lrs_used(num_epochs: int, warmup=None, epochs=None):
    """{1-based epoch: lr} read from the optimiser after nnU-Net's on_train_epoch_start, as run_training does."""
    t = _fake_trainer(num_epochs, warmup)
    out = {}
    for c in (range(num_epochs) if epochs is None else [e - 1 for e in epochs]):
        t.current_epoch = c
        nnUNetTrainer.on_train_epoch_start(t)
        out[c + 1] = t.optimizer.param_groups[0]["lr"]
        assert t.logged[-1] == ("lrs", out[c + 1], c), "nnU-Net logs the lr the epoch trains with"
    return out


def test_default_warmup_gives_the_authors_per_epoch_lr():
    assert nnUNetTrainerGMS.gms_warmup_epochs == 5
    E = 1000
    lrs = _lrs_used(E)
    assert [lrs[e] / BASE for e in range(1, 7)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.0], abs=1e-12)
    assert lrs[1] == 0.0, "the first epoch trains at lr 0"
    # the authors' cosine for e > 5: base * (1 + cos(pi * (e - 6) / (E - 5))) / 2
    for e in range(6, E + 1):
        assert lrs[e] == pytest.approx(BASE * (1 + math.cos(math.pi * (e - 6) / (E - 5))) / 2, rel=1e-12, abs=1e-18)
    assert lrs[7] < lrs[6] and all(lrs[e + 1] <= lrs[e] for e in range(6, E))
    # the cosine end: tiny in the last epoch, exactly 0 where the cosine ends (one step after the last epoch)
    assert 0 < lrs[E] < 1e-5 * BASE
    assert _fake_trainer(E).lr_scheduler.lr_at(E) == 0.0


def test_schedule_depends_on_the_epoch_only_as_when_resuming():
    """nnU-Net steps with current_epoch, also after --c: the lr of an epoch does not depend on what ran before."""
    full = _lrs_used(50)
    resumed = _lrs_used(50, epochs=[3, 4, 20, 49, 50])
    assert all(resumed[e] == full[e] for e in resumed)


def test_warmup_zero_is_the_plain_cosine_as_before():
    """W = 0 (the benchmark's nnUNetTrainerGMS_bw0): exactly the former schedule, cosine from base in epoch 1."""
    for E in (10, 1000):
        lrs = _lrs_used(E, warmup=0)
        for e, lr in lrs.items():
            assert lr == BASE * 0.5 * (1 + math.cos(math.pi * min((e - 1) / E, 1.0))), (E, e)
        assert lrs[1] == BASE


def test_warmup_one_is_one_epoch_at_zero_then_the_cosine():
    E = 20
    lrs = _lrs_used(E, warmup=1)
    assert lrs[1] == 0.0 and lrs[2] == pytest.approx(BASE, rel=1e-12)
    for e in range(2, E + 1):
        assert lrs[e] == pytest.approx(BASE * (1 + math.cos(math.pi * (e - 2) / (E - 1))) / 2, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("w", [2, 3, 10])
def test_general_warmup_ramps_to_the_peak_in_epoch_w(w):
    E = 100
    lrs = _lrs_used(E, warmup=w)
    assert [lrs[e] for e in range(1, w + 1)] == pytest.approx([BASE * (e - 1) / (w - 1) for e in range(1, w + 1)])
    assert lrs[w] == pytest.approx(BASE) and lrs[w + 1] == pytest.approx(BASE) and lrs[w + 2] < BASE


def test_an_epoch_at_lr_zero_leaves_adamw_weights_unchanged():
    """The first warm-up epoch (lr 0) moves no weight: AdamW's step and its decoupled weight decay both scale with
    the lr (only the moment estimates are updated)."""
    t = _fake_trainer(100)
    nnUNetTrainer.on_train_epoch_start(t)
    before = [p.detach().clone() for p in t.network.parameters()]
    for _ in range(3):
        t.optimizer.zero_grad()
        t.network(torch.randn(4, 3)).pow(2).sum().backward()
        t.optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, t.network.parameters()))
    assert t.optimizer.state[next(t.network.parameters())]["step"] == 3


@pytest.mark.parametrize("w", [-1, 2.5])
def test_bad_warmup_is_a_clear_error(w):
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=BASE)
    with pytest.raises(UserError, match="gms_warmup_epochs"):
        WarmupCosineLR(opt, BASE, 100, w)
