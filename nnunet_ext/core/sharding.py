"""One rule for splitting a dataset's cases over processes (parts of a job, DDP ranks).

``shard(cases, part, num_parts)``: the sorted cases, every ``num_parts``-th from ``part`` on, as
``nnUNetv2_predict -part_id/-num_parts`` splits its cases: the parts are disjoint, cover every case exactly once,
and differ in size by at most one. Sorting first makes a part independent of the order the cases were listed in,
so processes that list the same cases agree on their parts.
"""
from __future__ import annotations

from typing import Dict, Iterable, List


def shard(cases: Iterable[str], part: int, num_parts: int) -> List[str]:
    """The cases of ``part`` (0-based) of ``num_parts`` (see the module doc); ``ValueError`` for a part outside
    ``0..num_parts - 1``."""
    if not 0 <= part < num_parts:
        raise ValueError(f"part {part} is not in 0..{num_parts - 1}")
    return sorted(cases)[part::num_parts]


def check_part(part: int, num_parts: int) -> None:
    """``ValueError`` (one line, in the command line's terms) unless ``num_parts >= 1`` and
    ``0 <= part < num_parts``."""
    if num_parts < 1:
        raise ValueError(f"--num-parts {num_parts}: at least 1")
    if not 0 <= part < num_parts:
        raise ValueError(f"--part {part}: not in 0..{num_parts - 1} (parts are counted from 0, as nnUNetv2_predict's "
                         f"-part_id)")


def part_of(cases: Iterable[str], num_parts: int) -> Dict[str, int]:
    """``{case: the part (0-based) that handles it}`` under :func:`shard`."""
    return {c: i % num_parts for i, c in enumerate(sorted(cases))}
