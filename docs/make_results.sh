#!/usr/bin/env bash
# Regenerates the results examples from a real search on digits: docs/plot-history.png and
# docs/plot-stability.png (shown in docs/guide.md, "Reading the results"), plus the table (README.md's tour),
# the CSV excerpt (docs/guide.md), the verdict and the retrain's summary (both pages) printed to stdout for pasting,
# and the study's report: docs/report.html and its screenshot docs/report.png (headless Chromium, when installed).
# Runs in a temporary folder, so no study of yours is touched. It took 50-57 s
# on 2 cores (2026-11-27), and 21 s on a newer 2-core AMD EPYC (2026-11-30).
#
#   bash docs/make_results.sh            # the defaults below
#   N=24 EPOCHS=15 bash docs/make_results.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
N="${N:-12}"
EPOCHS="${EPOCHS:-5}"
LR="${LR:-1e-4:1}"  # wider than the default, so the stability map shows where training breaks down
cs() { PYTHONPATH="$repo" python -m cnnsearch "$@"; }
cd "$work"
cs run --study digits -n "$N" --epochs "$EPOCHS" --lr "$LR" --seed 0 > run.log
COLUMNS=140 cs show --study digits --limit 8
cs export --study digits --out digits.csv
python - <<'PY'
import pandas as pd
frame = pd.read_csv("digits.csv", dtype_backend="numpy_nullable", parse_dates=["started", "completed"])
cols = ["number", "status", "cv_mean", "cv_std", "fold_0", "lr", "layers", "optimizer", "momentum", "diverged",
        "started"]
print(frame[cols].head(5).to_csv(index=False), end="")
PY
cs plot --study digits --out plots --dpi 80
sed -n '/^Verdict$/,/^Resume:/p' run.log | sed '$d'
cs retrain --study digits > retrain.log
head -2 retrain.log
cs report --study digits --out "$repo/docs/report.html"
if command -v chromium >/dev/null 2>&1; then
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,1500 \
        --screenshot="$work/report.png" "file://$repo/docs/report.html" 2>/dev/null
    # a small palette PNG for the README
    python -c "from PIL import Image; Image.open('$work/report.png').convert('RGB').resize((700, 1050), Image.LANCZOS).quantize(64).save('$repo/docs/report.png', optimize=True)"
fi
cp plots/history.png "$repo/docs/plot-history.png"
cp plots/stability.png "$repo/docs/plot-stability.png"
ls -l "$repo"/docs/plot-*.png "$repo"/docs/report.*
echo "study kept in $work/studies/digits.db"
