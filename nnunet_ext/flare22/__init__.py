"""FLARE22 coarse-to-fine pipeline (issue #12). Built so far: ``roi`` (the region of interest from a coarse
prediction: largest components, bounding box, margin in mm, border clipping, fallback). The converter is
``nnunet_ext.conversion.flare22``; the planner, trainer and ``predict-c2f`` are not built yet."""
