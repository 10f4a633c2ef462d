#!/usr/bin/env bash
# benchmarks/same_bytes.sh REPO OUT: the demo corpus built and trained by the checkout REPO
# (with its own .venv), for comparing two checkouts: OUT/shards.sha256 (every shard,
# tokenizer and failures file) and OUT/losses.txt (each of the demo config's first 100
# steps, seed 0). Run it on two checkouts and diff the two files. A third argument, --smoke,
# makes it a corpus of a few dozen examples and 2 steps of the demo config with one bucket a
# task and small batches (benchmarks/smoke.py).
set -euo pipefail
REPO=$(cd "$1" && pwd); OUT=$2
SIZES=(--videos 400 --images 1000 --audio 200); STEPS=100; SMALL=()
if [[ ${3:-} == --smoke ]]; then
  SIZES=(--videos 30 --images 30 --audio 18); STEPS=2
  # the demo config with one bucket a task and small batches: smoke.py's SMALL_DEMO, read
  # from REPO's own copy, so that it names REPO's tasks
  mapfile -t SMALL < <(cd "$REPO/benchmarks" && "$REPO/.venv/bin/python" -c \
    'from smoke import SMALL_DEMO; print("\n".join(SMALL_DEMO))')
fi
cd "$REPO"
rm -rf "$OUT"; mkdir -p "$OUT"
PY=$REPO/.venv/bin/python
IMPAX=$REPO/.venv/bin/impax
$IMPAX demo-corpus "$OUT/corpus" "${SIZES[@]}" > "$OUT/corpus.log"
for m in videos images audio; do
  for s in train test; do
    $IMPAX build jsonl --input "$OUT/corpus/$m-$s.jsonl" --output "$OUT/data/$m" --split $s \
      --video-short-side 64 --image-short-side 64 --video-fps 10.0 --tokenizer "$OUT/corpus/tokenizer.model" >> "$OUT/build.log"
  done
done
(cd "$OUT/data" && sha256sum */*.array_record-* */tokenizer.model */failures-*.jsonl) > "$OUT/shards.sha256"
$IMPAX train train/configs/demo.py:"$OUT/data" --workdir "$OUT/run" --set steps=$STEPS --set log_every=1 \
  --set eval_every=0 --set keep_best= --set eval_at_end=false --set plots=false \
  --set checkpoint_every=1000 ${SMALL[@]+"${SMALL[@]}"} \
  > "$OUT/train.log" 2>&1
$PY - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/run/metrics.jsonl")]
with open(f"{out}/losses.txt", "w") as f:
  for r in rows:
    if "loss" in r:
      f.write(f"{r['step']} {r['task']} {r['loss']!r}\n")
PY
wc -l "$OUT/losses.txt" "$OUT/shards.sha256"
