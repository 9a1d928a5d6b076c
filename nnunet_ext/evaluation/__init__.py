"""``nnunet-ext evaluate``: Dice, normalised surface Dice (NSD), HD95 and volume differences per case and class.

Python API::

    from nnunet_ext.evaluation import evaluate_folders, EvaluationError, case_metrics
    result = evaluate_folders(gt_dir, pred_dir, labels=None, tolerance=1.0, num_processes=None,
                              out_dir=None, file_ending=None, dataset_json=None, progress=True)
    rows = case_metrics(ref, pred, spacing, labels, tolerance)

Definitions and the conventions for empty masks: :mod:`nnunet_ext.evaluation.metrics`; files, geometry
checks and outputs: :mod:`nnunet_ext.evaluation.evaluate`. Heavy libraries (torch, MONAI, nnU-Net's
readers) are imported only when a metric is computed.
"""
from nnunet_ext.evaluation.evaluate import evaluate_folders, format_markdown, parse_labels, parse_tolerance, \
    write_outputs
from nnunet_ext.evaluation.metrics import DEFAULT_TOLERANCE_MM, EvaluationError, binary_metrics, case_metrics, \
    summarize

__all__ = ["evaluate_folders", "case_metrics", "binary_metrics", "summarize", "EvaluationError", "format_markdown",
           "parse_labels", "parse_tolerance", "write_outputs", "DEFAULT_TOLERANCE_MM"]
