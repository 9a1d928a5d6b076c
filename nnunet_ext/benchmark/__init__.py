"""Fair comparison of nnU-Net trainers: ``nnunet-ext benchmark`` and ``nnunet-ext plan-small``.

* :mod:`nnunet_ext.benchmark.protocol`: the benchmark (trainers x seeds, same budget, split and seeds;
  resumable) - :func:`run_benchmark`, :class:`BenchmarkConfig`.
* :mod:`nnunet_ext.benchmark.variant`: the generated ``<Trainer>__bench`` trainer variants.
* :mod:`nnunet_ext.benchmark.stats`: mean/sd over seeds, paired differences, bootstrap CIs.
* :mod:`nnunet_ext.benchmark.report`: benchmark.json / .md, per_case.csv, boxplot.png.
* :mod:`nnunet_ext.benchmark.plans`: small-budget nnU-Net plans (``plan-small``).

Kept free of imports: ``nnunet-ext`` imports this package's ``cli`` at start-up.
"""
