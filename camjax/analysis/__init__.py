"""Host-side analyses of finished runs: plots, tables and tests that explain
what a regularizer did, beyond the headline accuracy.

Submodules are imported explicitly (`from camjax.analysis import per_class`)
so that importing one analysis never pulls in another's dependencies.

  per_class   paired per-class comparison of two runs on the same test set
              (exact McNemar tests, Holm / Benjamini-Hochberg correction).
  multilabel  COCO-style (mAP, CP/CR/CF1, OP/OR/OF1) and pedestrian-attribute
              style (mA, instance accuracy/precision/recall/F1) metrics.
  weights     CAM classifier weight statistics (sparsity, negative mass) and
              histograms across runs.
  cam_grid    Fig. 1-style grids of positive and top negative CAMs with boxes.
  sweep       the LinR sweet-point sweep's table, figures and sweet point.
  analyze     mode=analyze: all of the above over several runs, report.html.
"""
