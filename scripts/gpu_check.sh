#!/usr/bin/env bash
# GPU check (about 10-20 minutes): `make bench` on the GPU (incl. fused training), one short sweep over
# all visible GPUs with 1 and with 4 jobs per GPU (the pool launcher's default), then the full
# batch_size study (profile=full, fuse=auto: one fused model per batch size), printing throughput,
# wall times and GPU utilization. Goal: the full batch_size study in <= 15 min on one H200.
# Usage: scripts/gpu_check.sh [output folder]   (default: a temporary folder; reports are copied there)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d -t normlab-gpu-XXXX)}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"

command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi here; this script is for GPU machines"; exit 2; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, "GPUs:", torch.cuda.device_count())'

# GPU utilization sampled every second while the checks run.
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
    > "$OUT/utilization.csv" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

mark() { echo "$(date +%s) $1" >> "$OUT/phases.txt"; }
mark bench
timeout 300 "$PY" -m normlab.bench --epochs 3 --repeats 5 --no-sweep --out "$OUT/bench-cuda.md" | tee "$OUT/bench.txt"

# The same 8 cells (2 norms x 4 seeds, 60k images, 2 epochs) with 1 and with 4 jobs per GPU.
for per_gpu in 1 4; do
    mark "sweep-$per_gpu"
    started=$(date +%s)
    timeout 120 "$PY" -m normlab.train -m study="gpu_check_$per_gpu" norm=native,scratch seed=0,1,2,3 \
        trainer.max_epochs=2 hydra.launcher.jobs_per_gpu="$per_gpu" hydra.sweep.dir="$OUT/sweep-$per_gpu" \
        2>&1 | grep -E '^\[sweep\]|error' | tail -3
    echo "sweep jobs_per_gpu=$per_gpu: $(( $(date +%s) - started )) s for 8 cells"
done

# The full batch-size study (all 60k images, 10 epochs, 5 seeds, fused where fuse=auto says).
mark batch_size_full
started=$(date +%s)
timeout 1200 "$PY" -m normlab.train -m experiment=batch_size profile=full study=batch_size_full \
    hydra.sweep.dir="$OUT/batch_size_full" 2>&1 | grep -E '^\[sweep\]|Fused training|error' | tail -4 || true
echo "batch_size study, profile=full: $(( $(date +%s) - started )) s wall time"
"$PY" -m normlab.report batch_size_full >/dev/null 2>&1 && cp experiments/batch_size_full/RESULTS.md "$OUT/" || true
mark end
kill $SAMPLER 2>/dev/null || true

"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

out = Path(sys.argv[1])
client = MlflowClient()
for per_gpu in (1, 4):
    experiment = client.get_experiment_by_name(f"gpu_check_{per_gpu}")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'cell'") if experiment else []
    gpu = [r.data.metrics.get("system/gpu_0_utilization_percentage") for r in runs]
    print(f"jobs_per_gpu={per_gpu}: system/gpu_0_utilization_percentage (MLflow's monitor, last sample) "
          f"logged by {sum(v is not None for v in gpu)}/{len(runs)} runs")
    rates = [r.data.metrics.get("perf/samples_per_s", float("nan")) for r in runs]
    finished = sum(r.info.status == "FINISHED" for r in runs)
    print(f"jobs_per_gpu={per_gpu}: {finished}/{len(runs)} runs finished, per-run samples/s "
          f"median {pd.Series(rates).median():.0f}, sum over concurrent runs ~{per_gpu * pd.Series(rates).median():.0f}")
phases = [line.split(maxsplit=1) for line in (out / "phases.txt").read_text().splitlines()]
samples = pd.read_csv(out / "utilization.csv", names=["time", "gpu", "util", "mem"], skipinitialspace=True)
samples["t"] = pd.to_datetime(samples["time"]).astype("int64") // 10**9
for (start, name), (end, _) in zip(phases, phases[1:]):
    phase = samples[(samples["t"] >= int(start)) & (samples["t"] < int(end))]
    if len(phase):
        by_gpu = phase.groupby("gpu")["util"].agg(["mean", "max"]).round(0)
        print(f"GPU utilization during {name}: " + "; ".join(
            f"GPU {gpu} mean {row['mean']:.0f}% max {row['max']:.0f}%" for gpu, row in by_gpu.iterrows()))
PY
tail -1 "$OUT/bench.txt"
echo "reports in $OUT"
