#!/usr/bin/env bash
# Checks for a GPU machine, in one call: the CUDA paths of train.py (whole run against a resumed
# one, bfloat16, the MNIST PIPS backbone, NCCL under torchrun), infer.py and evaluate.py, then
# bench.py's GPU row (results/README.md). Everything lands in $OUT/gpu.tar.gz.
#   Prepare (here): mkdir -p .gpu && for f in ../shared/data/MNIST/raw/*-ubyte; do
#                   gzip -c $f > .gpu/$(basename $f).gz; done   (.gpu/ is git-ignored)
#   On the GPU machine, carrying .gpu:  bash .ci/device_checks.sh
#   Dry run on a CPU:  DEV=cpu EXTRA="--subset 1024" NOBENCH=1 OUT=/tmp/out .ci/device_checks.sh
set -u
export PYTHONUNBUFFERED=1
DEV=${DEV:-cuda}; EXTRA=${EXTRA:-}
R=$OUT/r; mkdir -p $R /tmp/data/MNIST/raw /tmp/cfg
for f in .gpu/*.gz; do gunzip -c $f > /tmp/data/MNIST/raw/$(basename $f .gz); done
log() { echo "== $(date +%T) $*" | tee -a $R/log.txt; }
step() {
  local name=$1 limit=$2; shift 2; log "$name: $*"; local t0=$SECONDS
  timeout $limit "$@" > $R/$name.out 2>&1; local rc=$?
  log "$name rc=$rc $((SECONDS - t0)) s"; tail -3 $R/$name.out | tee -a $R/log.txt
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/nvidia-smi.txt 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee -a $R/log.txt
python3 - <<'PY'
import json
for scheme in ("simple", "composite"):
    d = json.load(open(f"configs/train_{scheme}_config.json"))
    d["save_every"] = 1
    if scheme == "composite":
        d["precision"] = "bfloat16"
    json.dump(d, open(f"/tmp/cfg/train_{scheme}.json", "w"))
PY
S="--model_config configs/model_simple_config.json --train_config /tmp/cfg/train_simple.json --data_root /tmp/data --device $DEV $EXTRA"
C="--model_config configs/model_composite_mnist_config.json --train_config /tmp/cfg/train_composite.json --data_root /tmp/data --device $DEV $EXTRA"
step simple_whole 150 python3 train.py --scheme simple $S --save_dir /tmp/runs/s --epochs 3
mkdir -p /tmp/runs/s2; cp /tmp/runs/s/checkpoint_epoch_001.pth /tmp/runs/s2/
step simple_resumed 120 python3 train.py --scheme simple $S --save_dir /tmp/runs/s2 --epochs 3 --resume auto
step simple_compare 60 python3 -c "
import torch
a = torch.load('/tmp/runs/s/final_model.pth', weights_only=True)['model_state_dict']
b = torch.load('/tmp/runs/s2/final_model.pth', weights_only=True)['model_state_dict']
print('max |whole - resumed| over weights:', max((a[k].float() - b[k].float()).abs().max().item() for k in a))"
step composite_bf16 180 python3 train.py --scheme composite $C --save_dir /tmp/runs/c --epochs 2
mkdir -p /tmp/runs/c2; cp /tmp/runs/c/checkpoint_epoch_001.pth /tmp/runs/c2/
step composite_resumed 120 python3 train.py --scheme composite $C --save_dir /tmp/runs/c2 --epochs 2 --resume auto
step torchrun_nccl 120 torchrun --standalone --nproc_per_node 1 train.py --scheme simple $S --save_dir /tmp/runs/ddp --epochs 1
step infer_grid 60 python3 infer.py --model_config /tmp/runs/s/model_config.json --ckpt_path /tmp/runs/s/final_model.pth --save_path $R/grid_$DEV.png --device $DEV
step evaluate 120 python3 evaluate.py --model_config /tmp/runs/s/model_config.json --ckpt_path /tmp/runs/s/final_model.pth --data_root /tmp/data --device $DEV --out $R/eval_$DEV.json
for run in s s2 c c2; do cp /tmp/runs/$run/metrics.csv $R/metrics_$run.csv 2>/dev/null; done
[ -z "${NOBENCH:-}" ] && step bench 330 python3 bench.py --data_root /tmp/data --device $DEV --reps 3 --out $R/bench-gpu.json
tar czf $OUT/gpu.tar.gz -C $OUT r
log done
