#!/usr/bin/env bash
# Every GPU measurement of the README's performance section in one run, for a machine lent for
# minutes: the reference fine-tune (experiment=reference: gpt2-medium, 2 epochs, fp32) timed as a
# whole process; the training step against nanoGPT (eager and compiled) and Hugging Face at 8 x 256
# in fp32 and bf16, ours with its loss compiled too, and compiled into CUDA graphs; MFU at 32 x 1024
# in bf16. Each result is written to $OUT (default bench-gpu/) as soon as it is made, so a run cut
# short keeps what it measured.
#
#   bash bench/gpu.sh [DATA]          # DATA: the seed records (default ../shared/data/instruction-data.json)
#   DEVICE=cpu QUICK=1 bash bench/gpu.sh   # the same steps, tiny and on a CPU: checks the script itself
#   WHEELS=DIR bash bench/gpu.sh      # first installs the wheels in DIR, with no network, for this run only
#
# The project runs from this checkout, installed or not. A machine with PyTorch, Lightning,
# tiktoken and transformers but not Hydra and OmegaConf needs those as wheels, made where pip
# has a network:  python -m pip wheel --no-deps -w DIR "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" \
# "antlr4-python3-runtime==4.9.*". The GPT-2 vocabulary comes from $TIKTOKEN_CACHE_DIR, else
# ../shared/tiktoken_cache.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-gpu}"
data="${1:-../shared/data/instruction-data.json}"
device="${DEVICE:-cuda}"
accelerator=$([ "$device" = cuda ] && echo gpu || echo "$device")  # Lightning's name for it
python="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # gpt2_lightning from this checkout
if [ -n "${WHEELS:-}" ]; then
  site="$(mktemp -d)"
  "$python" -m pip install -q --no-index --no-deps --target "$site" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$site"
fi
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d ../shared/tiktoken_cache ]; then
  export TIKTOKEN_CACHE_DIR="$(cd ../shared/tiktoken_cache && pwd)"
fi
if [ -n "${QUICK:-}" ]; then
  small=(--repeats 1 --steps 1) large=(--batch 2 --seq 64) reference=(model=tiny trainer.max_steps=2)
else
  small=(--repeats 3 --steps 20) large=(--batch 32 --seq 1024 --steps 5) reference=()
fi

measure() {  # NAME COMMAND...: run, keep its output and seconds in $OUT/NAME.txt, go on whatever it returns
  local name=$1 start; shift
  start=$(date +%s%N)
  echo "== $name: $*" | tee "$out/$name.txt"
  "$@" 2>&1 | tee -a "$out/$name.txt"
  local status=${PIPESTATUS[0]} ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "== $name: exit $status after $((ms / 1000)).$(printf %03d $((ms % 1000))) s" | tee -a "$out/$name.txt"
}

if [ "$device" = cuda ]; then
  measure gpu nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
# The whole run first: the steps' many compilations may run into the machine's time limit.
run_dir="$(mktemp -d)"  # checkpoints of gpt2-medium: far too large to come back with the results
measure reference "$python" train.py experiment=reference model.pretrained=false "data.path=$data" data.url=null \
  "trainer.accelerator=$accelerator" test=false respond=false plot=false \
  export=false callbacks.progress_bar.refresh_rate=0 +trainer.profiler=simple "hydra.run.dir=$run_dir" "${reference[@]}"
cp "$run_dir/train.log" "$out/reference-train.log" 2>/dev/null
rm -rf "$run_dir"
measure train-step-8x256 "$python" bench/train_step.py --device "$device" --batches random \
  --impl ours ours-compiled ours-graphs hf nanogpt nanogpt-compiled "${small[@]}"
measure train-step-32x1024 "$python" bench/train_step.py --device "$device" --batches random \
  --precision bf16 --impl ours ours-compiled ours-graphs nanogpt-compiled --repeats 3 "${large[@]}"
