"""Horizontally fused training of K small cells as one model (HFTA): which cells fuse (``plan``),
the fused model and its SGD (``model``), its LightningModule (``module``) and a group's run
(``run``), each cell of it going through ``normlab.training.lifecycle`` like a solo cell."""
