"""The unlabelled cases of a raw nnU-Net dataset: ``imagesUnlabeled/`` named like ``imagesTr``."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

UNLABELED_DIR = "imagesUnlabeled"


def unlabeled_cases(raw_dataset_dir, dataset_json: dict) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """``({case: [channel files]}, {name: problem})`` for ``raw_dataset_dir/imagesUnlabeled``.

    A case is ``CASE_XXXX<file_ending>`` for every channel ``XXXX`` that ``dataset.json`` names
    (``channel_names``). A case with missing or extra channels, and a file that does not follow the naming,
    is returned as a problem (with the reason), never as a case. A missing folder gives ``({}, {})``.
    """
    folder = Path(raw_dataset_dir) / UNLABELED_DIR
    if not folder.is_dir():
        return {}, {}
    fe = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(fe) + "$")
    channels: Dict[str, Dict[int, str]] = {}
    problems: Dict[str, str] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        m = pattern.match(f.name)
        if not f.is_file() or not m:
            problems[f.name] = (f"does not follow nnU-Net's naming CASE_XXXX{fe} (XXXX = channel, as in imagesTr); "
                                f"rename or remove it")
            continue
        channels.setdefault(m.group("case"), {})[int(m.group("ch"))] = str(f)
    cases = {}
    expected = list(range(n_channels))
    for case, chans in channels.items():
        if sorted(chans) != expected:
            problems[case] = (f"has channel(s) {', '.join(f'{c:04d}' for c in sorted(chans))} but dataset.json names "
                              f"{n_channels} ({', '.join(f'{c:04d}' for c in expected)}); add or remove files")
            continue
        cases[case] = [chans[c] for c in expected]
    return cases, problems
