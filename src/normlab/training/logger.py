"""Lightning's logger interface over ``tracking.epochs.EpochRecorder``: a solo cell's epoch metrics
into its run, each epoch once, at step = the epoch number."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from normlab.tracking.epochs import EpochRecorder


class EpochLogger(Logger):
    """Lightning's logger interface over an ``EpochRecorder``: metrics at step = epoch number.

    Lightning logs epoch metrics at the global step, which differs between batch sizes, so curves
    of different runs would not overlay; it adds ``epoch`` (0-based) to every epoch-level metrics
    dict, which becomes the step (+1) and is not logged. Params, tags and the run's status are
    normlab's to record (``normlab.tracking.store``), not the logger's.
    """

    def __init__(self, recorder: EpochRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.recorder.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config is the run's params already

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        self.recorder.log(metrics, step=int(step or 0) if epoch is None else int(epoch) + 1)
