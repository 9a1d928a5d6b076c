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
(dataset, configuration, plans, split, budget, TTA, NSD tolerance) are refused, like a resumed ``OUT``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict

#: record file name -> its place under OUT/runs/seed<s>/ ({t} = trainer)
FILES: Dict[str, str] = {"benchmark_rows.json": "eval/{t}/benchmark_rows.json",
                         "timing.json": "timing/{t}.json",
                         "state.json": "state/{t}.json"}
#: the files a run needs to count as finished
REQUIRED = ("benchmark_rows.json", "timing.json")


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class RunRecords:
    """``DIR/protocol.json`` and ``DIR/seed<s>/<Trainer>/{benchmark_rows,timing,state}.json``."""

    def __init__(self, folder, fixed_keys, error=ValueError):
        self.dir = Path(folder).resolve()
        self.fixed_keys = tuple(fixed_keys)
        self.error = error

    def check_protocol(self, protocol: dict) -> None:
        """Refuse records of another protocol; write (or extend) ``protocol.json``."""
        path = self.dir / "protocol.json"
        fixed = {k: protocol.get(k) for k in self.fixed_keys}
        trainers, seeds = list(protocol.get("trainers", [])), list(protocol.get("seeds", []))
        if path.is_file():
            old = json.loads(path.read_text())
            diff = [k for k in self.fixed_keys if old.get(k) != fixed[k]]
            if diff:
                raise self.error(f"the records in {self.dir} are of another protocol ({', '.join(diff)} differ); "
                                 f"give another --records folder, or delete it")
            trainers = list(dict.fromkeys(old.get("trainers", []) + trainers))
            seeds = list(dict.fromkeys(old.get("seeds", []) + seeds))
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**fixed, "trainers": trainers, "seeds": seeds}, indent=2))
        os.replace(tmp, path)

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
