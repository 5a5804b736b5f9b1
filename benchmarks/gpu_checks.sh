#!/usr/bin/env bash
# The CUDA-only tests and the GPU figures of docs/benchmarks.md, in one run on one GPU. Each
# check runs under its own time limit (the quality and transfer tables at the end take up to 12
# minutes each).
#
#   bash benchmarks/gpu_checks.sh [OUTPUT_DIR]      # default: runs/gpu_checks
#
# Each check writes its whole output to OUTPUT_DIR/NAME.log and shows its last lines; the
# benchmarks end with their JSON object. A failing check does not stop the others; the exit
# status is 1 when any failed.
set -uo pipefail

out="${1:-runs/gpu_checks}"
mkdir -p "$out"
failed=()

check() {  # check NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then
        echo "   passed in $((SECONDS - start)) s"
    else
        echo "   FAILED (exit $?) after $((SECONDS - start)) s"
        failed+=("$name")
    fi
    tail -n 3 "$out/$name.log" | sed 's/^/   /'
}

python -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name())' || exit 1

# Host-device syncs under torch.cuda.set_sync_debug_mode("error"); CUDA results against CPU ones.
check cuda_tests 180 python -m pytest -q -p no:cacheprovider -k "cuda or never_syncs" \
    tests/test_batch_photometric.py tests/test_box_sampler.py tests/test_lars.py tests/test_momentum.py tests/test_no_host_sync.py \
    tests/test_transforms.py tests/test_view_decoder.py
# BatchPhotometric on a 256 x 224² batch, eager and compiled (target >= 20,000 images/s).
check augment 180 python benchmarks/augment.py --device cuda --compile --batch-only --json
# Decoding on the device: nvJPEG + exact crop/resize/flip + BatchPhotometric on 256 ImageNet JPEGs
# (target >= 5,000 images/s), eager and compiled photometric steps.
imagenet=../shared/data/imagenet-sample
check decode 180 python benchmarks/augment.py --device cuda --batch-only --decode-images "$imagenet" --json
check decode_compiled 240 python benchmarks/augment.py --device cuda --compile --batch-only --decode-images "$imagenet" --json
# SCRL vs BYOL step; foreach LARS / EMA against per-tensor loops.
check step 180 python benchmarks/step.py --device cuda --size 224 --batch 64 --channels-last --amp --json
# Data throughput vs training throughput at the paper's per-GPU setting.
pipeline=(python benchmarks/pipeline.py --workers 15 --arch resnet50 --image-size 224 --batch-size 256
          --amp bf16 --channels-last --json)
check pipeline 180 "${pipeline[@]}"
check pipeline_device_augment 180 "${pipeline[@]}" --augment-on-device
check pipeline_device_augment_compiled 300 "${pipeline[@]}" --augment-on-device --compile
# End to end on real JPEGs, decoded on the device, with 4 vs 16 workers (target: with 4, data
# wait < 2 % and images/s within 5 % of 16). Batches of 64 give the 1,000 photos 15 batches per
# epoch, so the timed steps 5-8 lie inside the first epoch, with the workers' queues full.
decode_run=(python benchmarks/pipeline.py --arch resnet50 --image-size 224 --batch-size 64 --amp bf16 --channels-last
            --data "$imagenet" --decode-on-device --steps 4 --json)
check pipeline_decode_4_workers 240 "${decode_run[@]}" --workers 4
check pipeline_decode_16_workers 240 "${decode_run[@]}" --workers 16
# Quality at small scale with exact pooling, and an SCRL row pooled with aligned=True beside it
# (three pretraining runs of ~215 s on an H100: run it when the lease has ~12 minutes left).
check quality 720 python benchmarks/quality.py --budget gpu --also-aligned --json
# Transfer on real photos: pretrain SCRL and BYOL on 1,128 photos, RoI measures and Faster R-CNN
# fine-tuning over 3 seeds (sized for one H100 in under 10 minutes; run it with that much left).
check transfer 720 python benchmarks/transfer.py --budget gpu --json --output-dir "$out/transfer"

if ((${#failed[@]})); then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all checks passed; logs in $out"
