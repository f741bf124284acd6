#!/usr/bin/env bash
# Peak memory of `meld merge` on tensors larger than the map budget: a 545M-parameter bf16 set whose
# embeddings and lm_head hold 262M entries each (hidden 1024, 2 layers, vocab 256000; base + 3
# experts, 1.1 GB a model), merged with the default --max-mapped (1 GiB: those two tensors are
# paged in windows) and with --max-mapped 4G, which maps them whole. Prints the best wall time of 3
# and its peak RSS; the outputs must be the same bytes. Needs ~7 GB of disk under WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/meld-paging}
swift build -c release -q
MELD=$PWD/.build/release/meld
mkdir -p "$WORK"
cd "$WORK"
[ -f big/expert2/model.safetensors ] || $MELD generate big --hidden 1024 --layers 2 --vocab 256000 --dtype bf16 >/dev/null
cat > ties.yml <<'YML'
merge_method: ties
base_model: big/base
models:
  - model: big/expert0
    parameters: {weight: 1.0, density: 0.2}
  - model: big/expert1
    parameters: {weight: 0.6, density: 0.5}
  - model: big/expert2
    parameters: {weight: 0.8, density: 0.35}
YML
sed 's/merge_method: ties/merge_method: task_arithmetic/; s/, density: [0-9.]*//' ties.yml > task_arithmetic.yml
printf 'merge_method: slerp\nbase_model: big/base\nmodels:\n  - model: big/base\n  - model: big/expert0\nparameters: {t: 0.4}\n' > slerp.yml
printf 'merge_method: model_stock\nbase_model: big/base\nmodels:\n  - model: big/expert0\n  - model: big/expert1\n  - model: big/expert2\n' > model_stock.yml
for m in ties task_arithmetic slerp model_stock; do
    for budget in 1G 4G; do
        best=999
        for r in 1 2 3; do   # best of 3: page-cache writes on this VM vary several-fold run to run
            cat big/*/model.safetensors > /dev/null   # page cache warm
            rm -rf "out-$budget"; sync
            /usr/bin/time -f "%e %M" -o time.txt $MELD merge $m.yml "out-$budget" --quiet --max-mapped $budget
            read secs rss < time.txt
            if awk "BEGIN{exit !($secs < $best)}"; then best=$secs; bestrss=$rss; fi
        done
        printf '%-16s --max-mapped %-4s %6.2f s  peak RSS %5d MiB\n' $m $budget $best $((bestrss / 1024))
    done
    cmp out-1G/model.safetensors out-4G/model.safetensors || { echo "$m: paging changed the output"; exit 1; }
done
rm -rf out-1G out-4G
