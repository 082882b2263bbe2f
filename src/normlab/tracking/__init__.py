"""MLflow and the files beside it: the store and its runs (``store``), the names runs record
(``names``), each epoch's metrics recorded once (``epochs``), which run a cell continues
(``resume``), its checkpoints (``checkpoints``) and the locks between processes (``locks``)."""
