#!/usr/bin/env bash
# GPU check for the lead (issue 13, item 7): bf16 forward on CUDA and a short 1-GPU bf16 training run.
# Usage: bash benchmarks/gpu_check.sh [python]   (needs a CUDA GPU; prints PASS/FAIL lines)
set -euo pipefail
PY=${1:-python}
export PYTHONPATH=${PYTHONPATH:-$PWD} DS_ACCELERATOR=cuda
"$PY" - <<'PY'
import torch
from cascade_dist.models import Cascade
assert torch.cuda.is_available(), "no CUDA device"
m = Cascade(["preact_resnet8", "preact_resnet20"], num_classes=10, in_channels=1, image_size=28).cuda().eval()
x = torch.randn(64, 1, 28, 28, device="cuda")
with torch.no_grad():
    ref = m(x)
    out = m.to(torch.bfloat16)(x)
err = (out.log_probs.exp() - ref.log_probs.exp()).abs().max().item()
assert out.log_probs.dtype == torch.float32 and err < 5e-2, err
print(f"PASS bf16 forward on {torch.cuda.get_device_name()}: max |p_bf16 - p_fp32| = {err:.3g}")
PY
"$PY" -m cascade_dist.train --config demo run.use_gpu=true run.num_workers=1 run.bf16=true run.channels_last=false \
    run.name=gpu-check run.control=false optim.warmup_epochs=1 optim.joint_epochs=1 tracking.enabled=false && echo "PASS 1-GPU bf16 training run"
