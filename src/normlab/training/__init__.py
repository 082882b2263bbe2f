"""Training one cell: the LightningModule (``module``), its callbacks, the inputs every cell is
built from (``inputs``) and the one lifecycle of a cell's run (``lifecycle``), which solo cells
(``solo``) and fused groups (``normlab.fused.run``) go through alike."""
