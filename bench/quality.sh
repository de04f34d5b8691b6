#!/usr/bin/env bash
# Quality benchmark (issue 3): train the published configurations and report valid
# perplexity with `rnngen score --stream`. Hours of CPU: run one at a time with
#   bash bench/quality.sh rnn200|lstm-small|lstm-medium|shakespeare
# Logs and checkpoints go to bench/results/. Only train.txt is trained on and only
# valid.txt is evaluated; there is no test split in the project.
set -euo pipefail
cd "$(dirname "$0")/.."
RNNGEN=${RNNGEN:-.venv/bin/rnngen}
PTB=../shared/corpora/ptb
SHAKES=../shared/corpora/shakespeare
OUT=bench/results
mkdir -p "$OUT"

run() {   # name, corpus dir, train options...
    local name=$1 dir=$2
    shift 2
    local start=$SECONDS
    "$RNNGEN" train "$dir/train.txt" --valid "$dir/valid.txt" -o "$OUT/$name.npz" "$@" 2> "$OUT/$name.log"
    echo "$name: trained in $((SECONDS - start)) s wall" | tee -a "$OUT/$name.log"
    "$RNNGEN" score -m "$OUT/$name.npz" --stream "$dir/valid.txt" | tee -a "$OUT/$name.log"
}

case "${1:-}" in
    rnn200)      run rnn200 "$PTB" --hidden 200 --dropout 0.3 --optimizer adam --lr 0.002 --clip 5 --epochs 7 \
                     --decay-after 4 --seed 1 ;;
    lstm-small)  run lstm-small "$PTB" --cell lstm --layers 2 --hidden 200 --optimizer sgd --lr 1 --clip 5 \
                     --bptt 20 --batch-size 20 --epochs 13 --decay-after 4 --seed 1 ;;
    lstm-medium) run lstm-medium "$PTB" --cell lstm --layers 2 --hidden 650 --dropout 0.5 --optimizer sgd --lr 1 --softmax full \
                     --clip 5 --bptt 35 --batch-size 20 --epochs 39 --decay-after 6 --lr-decay 0.83 \
                     --max-time 7200 --seed 1 ;;
    shakespeare) run shakespeare "$SHAKES" --unit char --cell lstm --layers 2 --hidden 320 --dropout 0.1 --softmax full \
                     --optimizer adam --lr 0.002 --clip 5 --batch-size 32 --bptt 64 --epochs 60 \
                     --max-time 3600 --seed 1 ;;
    *) echo "usage: bash bench/quality.sh rnn200|lstm-small|lstm-medium|shakespeare" >&2; exit 2 ;;
esac
