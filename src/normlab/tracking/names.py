"""The names MLflow records, defined once: tags that identify and describe runs, and metrics."""

from __future__ import annotations

# Tags of every run.
KIND_TAG = "kind"  # "cell" (a training run), "sweep" (a sweep's parent run) or "summary"
STATUS_TAG = "status"  # the run's status as a tag, which the UI can show as a column and group by
FAILURE_TAG = "failure"  # why a run failed or was killed, in one line
PARENT_TAG = "mlflow.parentRunId"  # nests a run under its sweep's run in the UI
FINGERPRINT_TAG = "config_fingerprint"  # what a run computes (normlab.config.cells.fingerprint)
SETUP_TAG = "setup"  # what a results table groups seeds by
SEED_TAG = "seed"
FUSED_WITH_TAG = "fused_with"  # on each run of a fused group: how many cells trained together, and which
# The grids of a study a run serves (a cell two grids share trains once): "; "-separated.
GRIDS_TAG = "grids"
HOST_TAG = "host"  # a run's: the machine that trains it; an experiment's: the one that made it
PID_STARTED_TAG = "pid_started"  # the run's process start time (seconds since the epoch, psutil)

# Metrics of a training run, logged once per epoch at step = the epoch number (1 after the first).
TRAIN_LOSS, TRAIN_ACC = "train/loss", "train/acc"  # running averages over the epoch, train mode
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"  # the test split, eval mode (moving statistics)
# After training, for nets with running statistics (normlab.evaluation).
VAL_ACC_PRECISE, VAL_ACC_BATCHSTATS = "val/acc_precise", "val/acc_batchstats"
LR, LR_NOW = "lr", "lr/now"  # the configured (peak) lr, and the lr at the epoch's end
EPOCH_SECONDS, SAMPLES_PER_S = "time/epoch_s", "perf/samples_per_s"  # speed: not results

# The ladder of budgets (lr_schedule=wsd; normlab.training.branches): each budget's results in every
# eval mode, annealed, at step = the budget in epochs, e.g. budget/val/acc. Its size in SGD steps and
# samples beside them.
BUDGET_PREFIX = "budget/"
BUDGET_VAL_ACC = BUDGET_PREFIX + VAL_ACC
BUDGET_STEPS, BUDGET_SAMPLES = BUDGET_PREFIX + "steps", BUDGET_PREFIX + "samples"
