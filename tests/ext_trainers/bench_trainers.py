"""Test-only trainers of the benchmark's tests (put this folder on nnUNet_extTrainer in the tests)."""
import multiprocessing
import os
import signal

from nnunet_ext.fd.trainer import nnUNetTrainerFD

#: after this epoch (0-based, its checkpoint written) the trainer kills its parent (the benchmark) and itself with
#: SIGKILL, as an external ``kill -9`` would
KILL_ENV = "nnUNet_ext_bench_kill_after_epoch"


class KillAfterEpochMixin:
    """Kills the process that started the training (the benchmark) and the training itself after epoch
    ``$nnUNet_ext_bench_kill_after_epoch``, once the epoch's checkpoint is written."""

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        kill = os.environ.get(KILL_ENV, "").strip()
        if kill and int(kill) == epoch:
            self.print_to_log_file(f"{KILL_ENV}={kill}: killing the benchmark and this run (test hook)")
            for child in multiprocessing.active_children():  # nnU-Net's data workers would outlive us
                child.kill()
            try:
                os.kill(os.getppid(), signal.SIGKILL)
            finally:
                os.kill(os.getpid(), signal.SIGKILL)


class nnUNetTrainerFD_killable(KillAfterEpochMixin, nnUNetTrainerFD):
    """nnUNetTrainerFD that kills the benchmark and itself after epoch $nnUNet_ext_bench_kill_after_epoch."""
