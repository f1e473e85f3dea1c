#!/usr/bin/env bash
# lightft on a non-SLURM cluster: run this on every node with the same rendezvous; torchrun starts one process per
# device and Lightning reads its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash launch/torchrun.sh configs/sft/smollm2_lora.yaml \
#       --config configs/trainer/multinode.yaml --config configs/trainer/fsdp2.yaml     # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash launch/torchrun.sh ...                  # on node1
#
# Environment: NNODES (1), NODE_RANK (0), NPROC_PER_NODE (GPUs on this node, else 1), MASTER_ADDR (localhost),
# MASTER_PORT (29500), LIGHTFT_PYTHON (.venv/bin/python).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "torchrun.sh: error: give the recipe: bash launch/torchrun.sh configs/<method>/<recipe>.yaml [lightft args]" >&2
  exit 2
fi
config=$1; shift
python=${LIGHTFT_PYTHON:-.venv/bin/python}
nnodes=${NNODES:-1}
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
nproc=${NPROC_PER_NODE:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 1)}
exec "$python" -m torch.distributed.run --nnodes "$nnodes" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$nproc" \
  --master_addr "${MASTER_ADDR:-localhost}" --master_port "${MASTER_PORT:-29500}" \
  -m lightft.cli fit --config "$config" --trainer.num_nodes "$nnodes" --trainer.devices "$nproc" "$@"
