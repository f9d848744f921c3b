"""Visualisations of what correspondence and correlation models look at (``vcorr visualize``).

* :mod:`.clip` reads a clip (a video file or a prepared video by id) and loads a model.
* :mod:`.correlation` dominant displacements of correlation volumes (DCF Figs 4-5), from a
  model's correlation modules or directly from normalised pixel patches (``--pixels``).
* :mod:`.correspondences` the k proposals of a CP module and the max-pool winners (CPNet Fig. 5).
* :mod:`.filters` learned CorrNet correlation weights (CorrNet Fig. 4).
"""
