#!/usr/bin/env bash
# make demo: the whole pipeline on the embedded default. Local folders under buckets/
# stand in for the cloud buckets, the DirectRunner for Dataflow and a folder watcher
# for Eventarc; the code is the same that runs in the cloud.
#
#   1. synthetic sample data   -> buckets/training-data/sample/{benign,malignant}/ (training)
#                                 buckets/training-data/holdout/ (images it never trains on)
#   2. training job            -> buckets/models/histo-cnn/<version>/
#   3. Beam bulk scoring       -> buckets/results/demo-scores/ (the holdout images)
#   4. Beam evaluation         -> buckets/results/demo-evaluation/report.html
#   5. the upload function     -> buckets/uploads/demo-patch.png.{gradcam.png,prediction.json}
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
BUCKETS=${BUCKETS:-buckets}
DATA=$BUCKETS/training-data/sample
HOLDOUT=$BUCKETS/training-data/holdout
MODELS=$BUCKETS/models
SCORES=$BUCKETS/results/demo-scores
EVALUATION=$BUCKETS/results/demo-evaluation
UPLOADS=$BUCKETS/uploads

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "1/5 Synthetic sample data (not real tissue) in $DATA"
if [[ -d $DATA/benign && -d $DATA/malignant ]]; then
	echo "already there: $(find "$DATA" -name '*.png' | wc -l) images"
else
	$PY -m histo_common.samples --output "$DATA" --count 300 --seed 0
fi
if [[ ! -d $HOLDOUT/benign ]]; then
	$PY -m histo_common.samples --output "$HOLDOUT" --count 120 --seed 1
fi

step "2/5 Training job (small run on the sample set; see README for real-data defaults)"
$PY -m training --data "$DATA" --output "$MODELS" --epochs 6 --max-minutes 3 --verbose 2

step "3/5 Bulk scoring with Apache Beam (DirectRunner) of the held-out images"
$PY -m beam_jobs.score --input "$HOLDOUT/**.png" --model "$MODELS/histo-cnn" \
	--output "$SCORES" --gradcam-top 12 --overwrite

step "4/5 Evaluation against the folder labels"
$PY -m beam_jobs.evaluate --scores "$SCORES" --output "$EVALUATION" --bootstrap 300 \
	--min-auc 0.8

step "5/5 The upload function: drop one image into $UPLOADS"
mkdir -p "$UPLOADS"
cp "$(find "$HOLDOUT/malignant" -name '*.png' | sort | head -n 1)" "$UPLOADS/demo-patch.png"
$PY -m functions.watch --bucket "$UPLOADS" --model "$MODELS/histo-cnn" --once

cat <<TXT

Done. What the demo made:
  model:        $MODELS/histo-cnn/ (metadata.json beside the SavedModel)
  scores:       $SCORES/results/  (errors in $SCORES/errors/, overlays in $SCORES/gradcam/)
  report:       $EVALUATION/report.html  (open it in a browser; metrics.json beside it)
  upload:       $UPLOADS/demo-patch.png.gradcam.png and .prediction.json
Next: 'make app' to browse all of this on http://127.0.0.1:8501, or 'make watch' and drop
images into $UPLOADS/. The sample data is synthetic: real results need real data.
Research use only: not a medical device.
TXT
