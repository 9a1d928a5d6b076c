"""nnUNetTrainerExt.run_training: when nnU-Net's loop raises, every augmenter the trainer holds is shut down before
the error propagates (so a crashed run exits instead of waiting on worker processes), and a failing shutdown never
hides the original error."""
import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.trainer import nnUNetTrainerExt


class _Augmenter:
    def __init__(self, fail: bool = False):
        self.finished, self.fail = 0, fail

    def _finish(self):
        self.finished += 1
        if self.fail:
            raise OSError("worker already gone")


def _trainer(**loaders):
    t = nnUNetTrainerExt.__new__(nnUNetTrainerExt)
    for name, value in loaders.items():
        setattr(t, name, value)
    return t


def test_a_crash_shuts_every_augmenter_down_and_propagates(monkeypatch, capsys):
    def crash(self):
        raise RuntimeError("crash in epoch 2")

    monkeypatch.setattr(nnUNetTrainer, "run_training", crash)
    train, val, unlabeled = _Augmenter(), _Augmenter(fail=True), _Augmenter()
    not_a_loader = _Augmenter()
    t = _trainer(dataloader_train=train, dataloader_val=val, dataloader_unlabeled=unlabeled, other=not_a_loader)
    with pytest.raises(RuntimeError, match="crash in epoch 2"):
        t.run_training()
    assert (train.finished, val.finished, unlabeled.finished) == (1, 1, 1)
    assert not_a_loader.finished == 0, "only the trainer's dataloader* attributes"
    assert "could not shut down dataloader_val" in capsys.readouterr().err


def test_a_finished_run_is_left_to_nnunet(monkeypatch):
    monkeypatch.setattr(nnUNetTrainer, "run_training", lambda self: None)
    train = _Augmenter()
    _trainer(dataloader_train=train, dataloader_val=None).run_training()
    assert train.finished == 0, "nnU-Net's on_train_end shuts its loaders down itself"


def test_no_final_validation_mixin_skips_and_says_why():
    from nnunet_ext.core.schedule import NoFinalValidationMixin

    class Base:
        validated = False

        def perform_actual_validation(self, save_probabilities=False):
            self.validated = True

    class Short(NoFinalValidationMixin, Base):
        def __init__(self):
            self.lines = []

        def print_to_log_file(self, *args):
            self.lines.append(" ".join(map(str, args)))

    class Kept(Short):
        skip_final_validation = False

    short, kept = Short(), Kept()
    short.perform_actual_validation()
    kept.perform_actual_validation()
    assert not short.validated and short.lines == ["Short: final validation skipped"]
    assert kept.validated and kept.lines == []


def test_class_argmax_equals_argmax_with_first_maximum_on_ties():
    import torch

    from nnunet_ext.core.labels import class_argmax

    torch.manual_seed(0)
    x = torch.randn(4, 5, 6, 7)
    for dim in (0, 1, 3):
        assert torch.equal(class_argmax(x, dim), x.argmax(dim))
    tie = torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]], [[3.0, 0.5]]])  # (C=3, 1, 2): class 1 and 2 tie at 3.0
    assert class_argmax(tie, 0).tolist() == [[1, 0]]
