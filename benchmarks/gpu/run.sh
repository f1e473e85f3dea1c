#!/usr/bin/env bash
# The GPU proof in one call (benchmarks/gpu/README.md). From the repository root of a copy that carries .gpu/
# (made here by benchmarks/gpu/fetch_wheels.sh), on one H100/H200 with torch and no network:
#
#   bash benchmarks/gpu/run.sh                          # <= 8 minutes; writes $OUT/gpu_table.md when OUT is set
#   LIGHTFT_GPU_SMOKE=1 bash benchmarks/gpu/run.sh      # the same pipeline on CPU, tiny shapes (or --smoke)
#
# Installs the carried wheels the image lacks, prints versions, then measures one row after another (each a
# `lightft bench` process under its own time limit, so a hanging row cannot eat the budget) and writes ONE markdown
# table (benchmarks/gpu/table.py) beside `lightft estimate`, with the goals and pass/fail per row. Rows that only
# measure memory run while the GPU-marked tests run beside them; rows that are timed run alone.
#
# Environment: GPU_BUDGET_S (whole script, default 480; smoke 1200), GPU_RESULTS (per-row folders, default
# runs/gpu-proof), GPU_ROWS (comma-separated row names to run, default all: smollm2, full1b, dpo, sft, qlora8b,
# lora8b, qlora8b_nooffload, tests), GPU_KERNELS (kernels of the throughput rows: liger where available, else
# torch), GPU_SKIP_WHEELS (carried packages to leave as the image has them, e.g. "transformers peft"), PYTHON
# (default python3; smoke: .venv/bin/python when there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
SMOKE=${LIGHTFT_GPU_SMOKE:-0}
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
if [[ $SMOKE == 1 ]]; then
    BUDGET=${GPU_BUDGET_S:-1200}
    PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
else
    BUDGET=${GPU_BUDGET_S:-480}
    PY=${PYTHON:-python3}
fi
RES=${GPU_RESULTS:-runs/gpu-proof}
RESERVE=15 # seconds kept for the table at the end
MIN_ROW=30 # a row is not started with less than this left
START=$SECONDS
DEADLINE=$((START + BUDGET))
OUT=${OUT:-}
if [[ -z $RES || $RES == / ]]; then echo "GPU_RESULTS: give a folder of its own" >&2; exit 2; fi
rm -rf "$RES"
mkdir -p "$RES"
echo "$BUDGET" >"$RES/budget"
echo "$SMOKE" >"$RES/smoke"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export HF_HOME=${HF_HOME:-/tmp/lightft-hf} PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

say() { echo "[$((SECONDS - START))s] $*"; }

table() { # the table so far: $RES/table.md, $OUT/gpu_table.md; printed at the end
    echo $((SECONDS - START)) >"$RES/elapsed"
    "$PY" benchmarks/gpu/table.py "$RES" --out "$RES/table.md" >/dev/null 2>>"$RES/table.log" || true
    if [[ -n $OUT ]]; then # what is under $OUT comes back even when the call is cut short
        if [[ -f $RES/table.md ]]; then cp "$RES/table.md" "$OUT/gpu_table.md"; fi
        tar -czf "$OUT/gpu_logs.tar.gz" --exclude='*.png' --exclude='*.jsonl' -C "$(dirname "$RES")" \
            "$(basename "$RES")" 2>/dev/null || true
    fi
}
trap table EXIT

# ---- install what the image lacks ----------------------------------------------------------------------------------
install_wheels() {
    local -a wheels=() keep=()
    read -r -a keep <<<"${GPU_SKIP_WHEELS:-}"
    local probe="import bitsandbytes, deepspeed, datasets, jsonargparse, gguf"
    if [[ $SMOKE == 1 ]] && "$PY" -c "$probe" >/dev/null 2>&1; then
        say "install: skipped (smoke; packages importable)"
        return 0
    fi
    if ! compgen -G ".gpu/wheels/*.whl" >/dev/null; then
        say "install: no .gpu/wheels/*.whl here (fetch them with benchmarks/gpu/fetch_wheels.sh; carry [\".gpu\"])"
        return 0
    fi
    local wheel name skip
    while read -r wheel; do
        name=$(basename "$wheel" | sed -E 's/-[0-9].*//' | tr 'A-Z_' 'a-z-')
        skip=0
        for k in "${keep[@]}"; do [[ $name == "$k" ]] && skip=1; done
        if [[ $skip == 0 ]]; then wheels+=("$wheel"); fi
    done < <("$PY" benchmarks/gpu/prep.py pick-wheels .gpu/wheels 2>>"$RES/install.log")
    if ((${#wheels[@]} == 0)); then
        say "install: nothing to install"
        return 0
    fi
    local pip=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check)
    if "${pip[@]}" "${wheels[@]}" >>"$RES/install.log" 2>&1; then
        say "install: ${#wheels[@]} wheels into $("$PY" -c 'import sys; print(sys.prefix)')"
    else
        "${pip[@]}" --upgrade --target /tmp/lightft-site "${wheels[@]}" >>"$RES/install.log" 2>&1
        export PYTHONPATH=/tmp/lightft-site:$PYTHONPATH
        say "install: ${#wheels[@]} wheels into /tmp/lightft-site (PYTHONPATH; the environment refused them)"
    fi
}
install_wheels

# ---- versions, device, Liger ----------------------------------------------------------------------------------------
"$PY" - "$RES/versions.txt" <<'EOF' >>"$RES/versions.log" 2>&1 || say "versions: python failed ($RES/versions.log)"
import importlib, importlib.metadata as md, importlib.util, platform, sys
names = ["torch", "transformers", "peft", "lightning", "bitsandbytes", "deepspeed", "datasets", "jsonargparse",
         "liger-kernel", "triton", "accelerate", "tokenizers", "huggingface-hub", "pyarrow", "fsspec", "pydantic",
         "typing-extensions", "pytest-xdist"]
found = []
for name in names:
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name} -")
report = [f"python {platform.python_version()}; " + ", ".join(found)]
import torch
cuda = torch.cuda.is_available()
report.append(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
              + (f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
                 if cuda else "cpu"))
for module in ["bitsandbytes", "deepspeed", "datasets", "jsonargparse", "gguf", "liger_kernel", "lightft"]:
    if module == "liger_kernel" and importlib.util.find_spec(module) is None:
        continue  # optional: the liger rows fall back to kernels torch
    try:
        importlib.import_module(module)
    except Exception as err:  # reported, not fatal: the rows that need it fail with their reason
        report.append(f"import {module}: FAILED {type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
with open(sys.argv[1], "w") as out:  # the libraries' own chatter stays in versions.log
    out.write("\n".join(report) + "\n")
EOF
cat "$RES/versions.txt" 2>/dev/null || true
if command -v nvidia-smi >/dev/null; then
    nvidia-smi 2>&1 | tee "$RES/nvidia-smi.txt" || true
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader >>"$RES/versions.txt" \
        2>&1 || true
fi
HAVE_LIGER=0 HAVE_CUDA=0
eval "$("$PY" benchmarks/gpu/prep.py env 2>>"$RES/env.log" | grep -E '^[A-Z_]+=[01]$')"
say "liger installed=$HAVE_LIGER; cuda=$HAVE_CUDA" | tee -a "$RES/versions.txt"
if [[ $SMOKE == 0 && $HAVE_CUDA == 0 ]]; then say "no CUDA device: rows will fail (use LIGHTFT_GPU_SMOKE=1 on CPU)"; fi

# ---- sizes per mode ------------------------------------------------------------------------------------------------
TINY=tests/assets/tiny-llama
SMOL=.gpu/smollm2-135m
if [[ $SMOKE == 1 ]]; then
    DEVICE=(--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true)
    [[ -f $SMOL/tokenizer.json ]] || SMOL=$TINY
    SMOL_SIZE=(1 64 2) FULL_SIZE=(2 128 2) BIG_SIZE=(128 2) PAIR_SIZE=(2 128 2 8) # batch seq steps [pairs]
    FULL_MODEL=$TINY BIG_MODEL=$TINY PAIR_MODEL=$TINY TOKENIZER=$TINY BIG_DTYPE=float32
    LIMITS=(smollm2=240 full1b=120 dpo=120 sft=120 qlora8b=120 lora8b=120 qlora8b_nooffload=120 tests=240)
else
    DEVICE=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-true)
    SMOL_SIZE=(8 2048 8) FULL_SIZE=(16 2048 6) BIG_SIZE=(2048 4) PAIR_SIZE=(4 256 20 0)
    gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 || true)
    gpu_mib=${gpu_mib//[^0-9]/}
    if ((${gpu_mib:-0} < 100000)); then FULL_SIZE=(8 2048 6); fi # an 80 GB H100: half the full fine-tune's batch
    FULL_MODEL=configs/models/llama3.2-1b BIG_MODEL=configs/models/llama3-8b PAIR_MODEL=$SMOL TOKENIZER=$SMOL
    BIG_DTYPE=bfloat16
    LIMITS=(smollm2=90 full1b=150 dpo=90 sft=75 qlora8b=200 lora8b=150 qlora8b_nooffload=200 tests=300)
fi
limit_of() {
    local kv
    for kv in "${LIMITS[@]}"; do if [[ ${kv%%=*} == "$1" ]]; then echo "${kv#*=}"; fi; done
}

RUN=(--trainer.accumulate_grad_batches 1 --trainer.max_epochs -1 --trainer.enable_progress_bar false)
COMPUTE=(--model.init_args.compute.chunked_loss true --model.init_args.model.attn_implementation auto)
FAST=() NOTE_FAST="kernels torch"
if [[ ${GPU_KERNELS:-liger} == liger && $HAVE_LIGER$HAVE_CUDA == 11 && $SMOKE == 0 ]]; then
    FAST=(--model.init_args.compute.kernels liger)
    NOTE_FAST="kernels liger"
fi
OFFLOAD_ON=(--model.init_args.compute.activation_offloading true)
OFFLOAD_OFF=(--model.init_args.compute.activation_offloading false)
NOTE_OFFLOAD="offloading on" NOTE_COMPUTE="chunked loss on, attention auto"

selected() { [[ -z ${GPU_ROWS:-} || ",${GPU_ROWS}," == *",$1,"* ]]; }

# row NAME "setup note" -- lightft bench args...: one `lightft bench` process under the row's time limit
row() {
    local name=$1 note=$2 dir=$RES/$1 limit left t0 rc=0
    shift 3
    mkdir -p "$dir"
    echo "$note" >"$dir/note"
    if ! selected "$name"; then
        echo "not selected (GPU_ROWS=$GPU_ROWS)" >"$dir/skipped"
        return 0
    fi
    limit=$(limit_of "$name")
    left=$((DEADLINE - SECONDS - RESERVE))
    if ((left < MIN_ROW)); then
        echo "budget spent (${left}s left of ${BUDGET}s)" >"$dir/skipped"
        say "$name: skipped, budget spent"
        table
        return 0
    fi
    if ((limit > left)); then limit=$left; fi
    echo "$limit" >"$dir/limit"
    say "$name: $note (limit ${limit}s)"
    t0=$SECONDS
    timeout -s KILL "$limit" "$PY" -m lightft.cli bench "$@" --out "$dir" >"$dir/bench.log" 2>&1 || rc=$?
    echo "$rc" >"$dir/rc"
    echo $((SECONDS - t0)) >"$dir/seconds"
    say "$name: exit $rc after $((SECONDS - t0))s"
    table
}

skip_row() { mkdir -p "$RES/$1"; echo "$3" >"$RES/$1/note"; echo "$2" >"$RES/$1/skipped"; say "$1: skipped, $2"; }

# ---- phase A: timed rows, alone on the device ----------------------------------------------------------------------
row smollm2 "batch ${SMOL_SIZE[0]} x ${SMOL_SIZE[1]}, r16 all-linear, no checkpointing, $NOTE_FAST, $NOTE_COMPUTE" -- \
    --config configs/sft/smollm2_lora.yaml --model.init_args.model.path "$SMOL" \
    --model.init_args.model.gguf_file null --model.init_args.model.random_init true "${DEVICE[@]}" "${RUN[@]}" \
    "${COMPUTE[@]}" "${FAST[@]}" --gradient_checkpointing false --batch_sizes "${SMOL_SIZE[0]}" \
    --seq_lens "${SMOL_SIZE[1]}" --steps "${SMOL_SIZE[2]}"

row full1b "batch ${FULL_SIZE[0]} x ${FULL_SIZE[1]}, AdamW, no checkpointing, $NOTE_FAST, $NOTE_COMPUTE" -- \
    --config configs/sft/smollm2_lora.yaml --model.init_args.model.path "$FULL_MODEL" \
    --model.init_args.model.gguf_file null --model.init_args.model.random_init true \
    --model.init_args.model.tokenizer "$TOKENIZER" "${DEVICE[@]}" "${RUN[@]}" "${COMPUTE[@]}" "${FAST[@]}" \
    --peft FullFineTune --optimizers adamw --gradient_checkpointing false --batch_sizes "${FULL_SIZE[0]}" \
    --seq_lens "${FULL_SIZE[1]}" --steps "${FULL_SIZE[2]}"

"$PY" benchmarks/gpu/prep.py chosen data/preference/train.jsonl "$RES/chosen.jsonl" "${PAIR_SIZE[3]}" >/dev/null
PAIRS=(--model.init_args.model.path "$PAIR_MODEL" --model.init_args.model.gguf_file null
       --model.init_args.model.random_init true "${DEVICE[@]}" "${RUN[@]}" "${COMPUTE[@]}" --synthetic false
       --gradient_checkpointing false --batch_sizes "${PAIR_SIZE[0]}" --seq_lens "${PAIR_SIZE[1]}"
       --steps "${PAIR_SIZE[2]}")
PAIR_DATA=()
if [[ ${PAIR_SIZE[3]} != 0 ]]; then
    PAIR_DATA=(--data.init_args.train.path data/preference/train.jsonl
               --data.init_args.train.max_examples "${PAIR_SIZE[3]}")
fi
row dpo "DPO, reference precomputed, ${PAIR_SIZE[0]} pairs x <=${PAIR_SIZE[1]}, LoRA r16, $NOTE_COMPUTE" -- \
    --config configs/dpo/smollm2_precomputed.yaml "${PAIRS[@]}" "${PAIR_DATA[@]}"
row sft "SFT on the same pairs' chosen side, ${PAIR_SIZE[0]} rows x <=${PAIR_SIZE[1]}, LoRA r16, $NOTE_COMPUTE" -- \
    --config configs/sft/smollm2_lora.yaml "${PAIRS[@]}" --data.init_args.train "$RES/chosen.jsonl" \
    --data.init_args.val "$RES/chosen.jsonl" --data.init_args.packing false --model.init_args.peft.init_args.dropout 0.0

# ---- phase B: memory rows, beside the GPU-marked tests ------------------------------------------------------------
mkdir -p "$RES/tests"
mapfile -t TEST_FILES < <(grep -rl --include='*.py' "pytest.mark.gpu" tests | sort)
XDIST=()
if [[ $SMOKE == 0 ]] && "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 8); fi # tiny fits, start-up bound
echo "pytest -m gpu ${XDIST[*]:+${XDIST[*]} }${TEST_FILES[*]}" >"$RES/tests/note"
TESTS_LIMIT=$(limit_of tests)
if ((TESTS_LIMIT > DEADLINE - SECONDS - RESERVE)); then TESTS_LIMIT=$((DEADLINE - SECONDS - RESERVE)); fi
TESTS_PID=
if ! selected tests; then
    echo "not selected (GPU_ROWS=$GPU_ROWS)" >"$RES/tests/skipped"
elif ((TESTS_LIMIT >= MIN_ROW && ${#TEST_FILES[@]} > 0)); then
    echo "$TESTS_LIMIT" >"$RES/tests/limit"
    say "tests: ${TEST_FILES[*]} in the background (limit ${TESTS_LIMIT}s)"
    (
        t0=$SECONDS rc=0
        timeout -s KILL "$TESTS_LIMIT" "$PY" -m pytest -m gpu -v -p no:cacheprovider "${XDIST[@]}" "${TEST_FILES[@]}" \
            >"$RES/tests/pytest.log" 2>&1 || rc=$?
        echo "$rc" >"$RES/tests/rc"
        echo $((SECONDS - t0)) >"$RES/tests/seconds"
    ) &
    TESTS_PID=$!
else
    echo "budget spent or no test file" >"$RES/tests/skipped"
fi

BIG=(--config configs/sft/llama3_8b_qlora.yaml --model.init_args.model.path "$BIG_MODEL"
     --model.init_args.model.random_init true --model.init_args.model.dtype "$BIG_DTYPE"
     --model.init_args.model.tokenizer "$TOKENIZER" "${DEVICE[@]}" "${RUN[@]}" "${COMPUTE[@]}"
     --data.init_args.val_fraction 0 --seq_lens "${BIG_SIZE[0]}" --steps "${BIG_SIZE[1]}")
BIG_NOTE="batch 1 x ${BIG_SIZE[0]}, checkpointing, paged AdamW 8-bit"
row qlora8b "NF4 + double quant, r16 all-linear, $BIG_NOTE, $NOTE_OFFLOAD, $NOTE_COMPUTE" -- "${BIG[@]}" \
    "${OFFLOAD_ON[@]}"
row lora8b "bf16 base, r16 all-linear, $BIG_NOTE, $NOTE_OFFLOAD, $NOTE_COMPUTE" -- "${BIG[@]}" "${OFFLOAD_ON[@]}" \
    --peft LoRA
if ! selected qlora8b_nooffload; then
    skip_row qlora8b_nooffload "not selected (GPU_ROWS=${GPU_ROWS:-})" "as QLoRA, offloading off"
elif ((DEADLINE - SECONDS - RESERVE < $(limit_of qlora8b_nooffload))); then
    skip_row qlora8b_nooffload "budget (optional row)" "as QLoRA, offloading off"
else
    row qlora8b_nooffload "as the QLoRA row, offloading off" -- "${BIG[@]}" "${OFFLOAD_OFF[@]}"
fi
if [[ -n $TESTS_PID ]]; then
    say "tests: waiting"
    wait "$TESTS_PID" || true
    say "tests: exit $(cat "$RES/tests/rc" 2>/dev/null || echo '?')" \
        "after $(cat "$RES/tests/seconds" 2>/dev/null || echo '?')s"
fi

# ---- the table -----------------------------------------------------------------------------------------------------
trap - EXIT
table
cat "$RES/table.md"
