"""Run records: the results of finished benchmark runs, kept apart from the (large) run folders.

``nnunet-ext benchmark --records DIR`` copies, after each run is evaluated, the three small files the report is
built from into ``DIR/seed<s>/<Trainer>/``:

* ``benchmark_rows.json``: per test case and class Dice / NSD / HD95 (from ``OUT/runs/seed<s>/eval/<Trainer>/``);
* ``timing.json``: nnU-Net's logged epoch times of the run (``OUT/runs/seed<s>/timing/<Trainer>.json``);
* ``state.json``: training wall time and attempts (``OUT/runs/seed<s>/state/<Trainer>.json``);

and the protocol to ``DIR/protocol.json``. A run that has a record is not trained, predicted or evaluated
again: its files are restored into ``OUT`` and the report includes it. The records are a few kB per run (no
models, no predictions), so a long benchmark can be committed as its runs finish and continued on another
machine or in a later session, where ``OUT`` (models, logs) no longer exists. Records of another protocol
(dataset, configuration, plans, split, budget, TTA, NSD tolerance) are refused, like a resumed ``OUT``
(``nnunet_ext.benchmark.protocol._check_protocol`` checks both folders).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

from nnunet_ext.atomic_io import replace_atomic

#: record file name -> its place under OUT/runs/seed<s>/ ({t} = trainer)
FILES: Dict[str, str] = {"benchmark_rows.json": "eval/{t}/benchmark_rows.json",
                         "timing.json": "timing/{t}.json",
                         "state.json": "state/{t}.json"}
#: the files a run needs to count as finished
REQUIRED = ("benchmark_rows.json", "timing.json")


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


class RunRecords:
    """``DIR/protocol.json`` and ``DIR/seed<s>/<Trainer>/{benchmark_rows,timing,state}.json``."""

    def __init__(self, folder):
        self.dir = Path(folder).resolve()

    def run_dir(self, seed: int, trainer: str) -> Path:
        return self.dir / f"seed{seed}" / trainer

    def has(self, seed: int, trainer: str) -> bool:
        return all((self.run_dir(seed, trainer) / f).is_file() for f in REQUIRED)

    def restore(self, seed: int, trainer: str, seed_dir: Path) -> None:
        """Copy the record into ``OUT/runs/seed<s>/`` (files already there are kept)."""
        for name, rel in FILES.items():
            src, dst = self.run_dir(seed, trainer) / name, Path(seed_dir) / rel.format(t=trainer)
            if src.is_file() and not dst.is_file():
                _copy_atomic(src, dst)

    def save(self, seed: int, trainer: str, seed_dir: Path) -> None:
        """Copy a finished run's files from ``OUT/runs/seed<s>/`` into the records."""
        for name, rel in FILES.items():
            src = Path(seed_dir) / rel.format(t=trainer)
            if src.is_file():
                _copy_atomic(src, self.run_dir(seed, trainer) / name)
