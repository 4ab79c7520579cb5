#!/usr/bin/env bash
# Installs deepearth_jax and runs the data and step benchmarks on whatever accelerator is present.
#
#   scripts/gpu_benchmark.sh OUTDIR
#
# Writes OUTDIR/{env.txt, data_vision.json, step_language.json, step_vision.json, step_vision_bf16.json,
# step_probe.json, step_probe_bf16.json, step_mae.json, encoder.json, train_vision_stream.json, profile/} and a
# log per benchmark. Every step row carries the device's matmul (float32, bfloat16) and copy ceilings measured
# in the same run, the step's FLOPs, utilisation (MFU) and peak memory. Wheels in ./.whl (for a machine without network access)
# are installed first when present. Environment: STORE (default /tmp/deepearth_bench_store), ROWS (full-shape
# observations to synthesize, default 512 = 6.6 GB float16), TORCH=0 to skip the PyTorch comparison.
set -euo pipefail
OUT=${1:?usage: scripts/gpu_benchmark.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
STORE=${STORE:-/tmp/deepearth_bench_store}
ROWS=${ROWS:-512}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  python3 -m pip install -q -e .
fi
python3 - <<'PY' | tee "$OUT/env.txt"
import jax, platform
print("python", platform.python_version(), "jax", jax.__version__, "backend", jax.default_backend())
print("devices", [d.device_kind for d in jax.devices()])
PY

COMPARE=--compare-torch
python3 -c "import torch" 2>/dev/null || COMPARE=""
[ "${TORCH:-1}" = "0" ] && COMPARE=""

if [ ! -f "$STORE/manifest.json" ]; then
  python3 -m deepearth_jax.data synth --layout store --out "$STORE" --observations "$ROWS" --species 100 \
    --vision-shape 8,24,24,1408 --language-dim 7168 --seed 2
fi

python3 -m deepearth_jax.benchmark data --store "$STORE" --batch-size 64 --runs 20 --mode vision \
  --json "$OUT/data_vision.json" 2>&1 | tee "$OUT/data_vision.log"
python3 -m deepearth_jax.benchmark step --config configs/language.py --batch-sizes 32,256 \
  --steps-per-call 1,16,100 $COMPARE --json "$OUT/step_language.json" 2>&1 | tee "$OUT/step_language.log"
python3 -m deepearth_jax.benchmark step --config configs/vision.py --config.mode=vision \
  --config.demo.vision_shape="(8,24,24,1408)" --batch-sizes 32,64 \
  --steps-per-call 1,16 --max-batch-gb 32 $COMPARE --json "$OUT/step_vision.json" 2>&1 | tee "$OUT/step_vision.log"
python3 -m deepearth_jax.benchmark step --config configs/vision.py --config.mode=vision --config.dtype=bfloat16 \
  --config.demo.vision_shape="(8,24,24,1408)" --batch-sizes 32,64 \
  --steps-per-call 1,16 --max-batch-gb 32 --json "$OUT/step_vision_bf16.json" 2>&1 | tee "$OUT/step_vision_bf16.log"
# The attentive probe on full tokens, float32 then bfloat16 (attention through jax.nn.dot_product_attention).
for DT in float32 bfloat16; do
  SUFFIX=$([ "$DT" = bfloat16 ] && echo _bf16 || true)
  python3 -m deepearth_jax.benchmark step --config configs/attentive_probe.py --config.dtype=$DT \
    --config.demo.vision_shape="(8,24,24,1408)" --batch-sizes 16,64,128 --steps-per-call 1 --max-batch-gb 32 \
    --json "$OUT/step_probe$SUFFIX.json" 2>&1 | tee "$OUT/step_probe$SUFFIX.log"
done
python3 -m deepearth_jax.benchmark step --config configs/mae.py:space_time=false --config.demo.vision_shape="(8,24,24,1408)" \
  --config.demo.language_dim=7168 --batch-sizes 32,64 \
  --steps-per-call 1,16 --max-batch-gb 32 $COMPARE --json "$OUT/step_mae.json" 2>&1 | tee "$OUT/step_mae.log"

# The Earth4D space-time encoder, forward+backward, JAX vs the PyTorch implementation of the same encoding.
python3 -m deepearth_jax.benchmark encoder --points 65536 $COMPARE --json "$OUT/encoder.json" 2>&1 | tee "$OUT/encoder.log"

# End to end: streamed full-token vision training (reads the store every step).
python3 -m deepearth_jax.train --config configs/vision.py --workdir /tmp/deepearth_bench_run \
  --config.store="$STORE" --config.mode=vision --config.device_epochs=false --config.batch_size=64 --config.num_steps=300 \
  --config.eval_every_steps=100000 --config.data.num_threads=16 --config.profile_steps=100,5 \
  2>&1 | tee "$OUT/train_vision_stream.log"
cp /tmp/deepearth_bench_run/summary.json "$OUT/train_vision_stream.json"
cp -r /tmp/deepearth_bench_run/profile "$OUT/profile"
echo "results in $OUT"
