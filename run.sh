#!/usr/bin/env bash
# The whole recipe on the tiny world, one stage after the other:
#   data -> pretrain -> SFT -> reward model -> best-of-K, DPO, PPO and RLOO -> reward model and PPO again -> report
# Each stage is skipped when it finished before and nothing it reads changed since (its script,
# the stages before it), so after a crash or a kill, run it again: it goes on where it stopped.
#
#   bash run.sh                                      # 2 CPU cores: 27 min with AVX-512 (bf16), 46 without (fp32)
#   RUN="torchrun --nproc_per_node=8" bash run.sh    # every training stage on 8 processes or GPUs
#   PRESET=config/tiny OUT=out/tiny bash run.sh      # the tiny chain of the tests: a minute or two
#   SEEDS=3 bash run.sh                              # 3 chains (out/seed1..3), one card pooled over them (seeds.py)
#   JOBS=1 bash run.sh                               # one stage at a time (by default, after the RM: two at once)
#
# With DATA=real, the chain of real data instead (into out/real), with no gold judge:
#   pretraining text (data/corpus.py) -> pretrain -> SFT on Alpaca (data/alpaca.py) -> on HH-RLHF's pairs
#   (data/hh_rlhf.py): the proxy RM on one half, the judge RM on the other -> best-of-K, DPO and PPO -> report,
#   every stage scored by the judge RM, which no stage sees (the proxy/gold split of Gao et al. 2022)
#   DATA=real bash run.sh                            # downloads TinyStories (or CORPUS=shakespeare, c4), Alpaca, HH-RLHF
#   DATA=real CORPUS_FILE=a.txt ALPACA_FILE=alpaca_data.json HH_FILE=train.jsonl.gz bash run.sh   # local files
#   DATA=real PRESET=config/real_tiny ... bash run.sh   # the tiny sizes of the tests
#   DATA=real PRESET=config/real_tiny CORPUS=c4wiki OUT=out/realfiles \   # the real files of ../shared/realdata
#     CORPUS_FILE=../shared/realdata/c4_demo.jsonl,../shared/realdata/wiki_demo.txt \
#     ALPACA_FILE=../shared/realdata/alpaca_en_demo.json HH_FILE=../shared/realdata/hh_harmless_test.jsonl.gz bash run.sh
#   (PRESET=config/real_cpu: the same on the default model, a CPU run; README: "Real data, end to end")
# (file paths are relative to this folder, as OUT is; CORPUS_FILE may name several, comma-separated)
#
# Each stage reads its preset $PRESET/<script>.py when there is one. Wall times go to
# $OUT/stage_times.json, the report card to $OUT/report.md.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
RUN=${RUN:-$PYTHON}
DATA=${DATA:-world}
case $DATA in
    world) OUT=${OUT:-out} ;;
    real) OUT=${OUT:-out/real} ;;
    *) echo "error: DATA must be world or real, not $DATA" >&2; exit 1 ;;
esac
PRESET=${PRESET:-}
SEEDS=${SEEDS:-1}  # SEEDS=3: the chain once per seed into $OUT/seed1, seed2, seed3, then a card of all
SEED=${SEED:-}     # every stage's --seed but the data's (run.sh sets it for each seed's chain)
JOBS=${JOBS:-auto} # 2: after the RM, two lanes of stages at once, half the cores each (below); 1: one
if [ "$JOBS" = auto ]; then  # (2 on the world's chain with plain python: its stages after the RM 8-19% faster)
    if [ "$DATA" = world ] && [ "$RUN" = "$PYTHON" ]; then JOBS=2; else JOBS=1; fi
fi
[ "$JOBS" = 1 ] || [ "$JOBS" = 2 ] || { echo "error: JOBS must be 1 or 2, not $JOBS" >&2; exit 1; }
[ "$JOBS" = 1 ] || [ "$RUN" = "$PYTHON" ] || { echo "error: JOBS=2 splits this machine's cores between two stages; with RUN=$RUN use JOBS=1" >&2; exit 1; }
[[ $SEEDS =~ ^[1-9][0-9]*$ ]] || { echo "error: SEEDS must be a whole number, 1 or more, not $SEEDS" >&2; exit 1; }
[ "$DATA" = world ] || [ "$SEEDS$JOBS" = 11 ] || { echo "error: SEEDS and JOBS are for the world's chain (DATA=world)" >&2; exit 1; }
mkdir -p "$OUT"
# One chain per output folder: $OUT/.run.lock is a link to the pid of the run that holds it (made
# in one step, so two runs cannot both take it). A run that was killed leaves it behind; the next
# run sees that no run.sh has that pid any more and takes it over.
LOCK=$OUT/.run.lock
for attempt in 1 2; do
    ln -s "$$" "$LOCK" 2>/dev/null && break
    holder=$(readlink "$LOCK" || true)
    if [ "$attempt" = 2 ] || ps -p "${holder:-0}" -o args= 2>/dev/null | grep -q run.sh; then
        echo "error: $OUT is in use by another run.sh (pid ${holder:-?}); wait for it to end," \
             "or give this one its own OUT=..." >&2
        exit 1
    fi
    rm -f "$LOCK"  # (stale: its run is gone)
done
trap '[ "$(readlink "$LOCK")" = $$ ] && rm -f "$LOCK"' EXIT

stage() {  # stage NAME INPUT... -- COMMAND...: runs COMMAND unless $OUT/NAME/.done is newer than every
    local name=$1 done_file=$OUT/$1/.done fresh=1 cmd=() found="" seeded=""   # input (a file, or a stage's .done)
    shift
    while [ "$1" != "--" ]; do
        local input=$1
        [ -f "$input" ] || input=$OUT/$1/.done
        [ -f "$input" ] || { echo "error: $1 is missing" >&2; exit 1; }
        [ -f "$done_file" ] && [ "$done_file" -nt "$input" ] || fresh=0
        shift
    done
    shift
    if [ $fresh = 1 ]; then echo "== $name: up to date, skipped"; return; fi
    for arg in "$@"; do  # the stage's preset goes right after its script, before the --key=value arguments
        cmd+=("$arg")
        if [ -z "$found" ] && [[ $arg == *.py ]]; then
            found=1
            [ -n "$PRESET" ] && [ -f "$PRESET/$(basename "$arg")" ] && cmd+=("$PRESET/$(basename "$arg")")
            [ -n "$SEED" ] && [[ $arg != data/* ]] && seeded=1
        fi
    done
    [ -n "${seeded:-}" ] && cmd+=("--seed=$SEED")  # (the world and its prompts stay the same)
    rm -f "$done_file"
    echo "== $name: ${cmd[*]}${LANE:+  (its output: $OUT/$name.log)}"
    local start=$SECONDS
    if [ -n "${LANE:-}" ]; then  # (beside another lane: its output to a file, not the terminal)
        "${cmd[@]}" > "$OUT/$name.log" 2>&1 || {
            echo "error: $name failed; the end of $OUT/$name.log:" >&2; tail -n 20 "$OUT/$name.log" >&2; exit 1; }
    else
        "${cmd[@]}"
    fi
    local seconds=$((SECONDS - start))
    mkdir -p "$OUT/$name" && echo "$seconds" > "$done_file"
    stage_times
    echo "== $name: done in $((seconds / 60)) min $((seconds % 60)) s"
}

stage_times() {  # $OUT/stage_times.json from the seconds each stage wrote into its .done
    "$PYTHON" -c 'import glob, json, os, sys
out = sys.argv[1]
path = os.path.join(out, "stage_times.json")
times = json.load(open(path)) if os.path.exists(path) else {}
for done in sorted(glob.glob(os.path.join(out, "*", ".done"))):
    seconds = open(done).read().strip()
    if seconds.isdigit():
        times[os.path.basename(os.path.dirname(done))] = int(seconds)
with open(path + f".{os.getpid()}", "w") as f:
    json.dump(times, f, indent=1)
os.replace(path + f".{os.getpid()}", path)' "$OUT"
}

if [ "$DATA" = real ]; then
    R=$OUT/data
    H=$R/hh_rlhf  # rankings.jsonl + prompts.jsonl (the proxy half), judge_rankings.jsonl, eval_*.jsonl (held out)
    CORPUS=${CORPUS:-tinystories} CORPUS_FILE=${CORPUS_FILE:-} ALPACA_FILE=${ALPACA_FILE:-} HH_FILE=${HH_FILE:-}
    stage corpus data/corpus.py ${CORPUS_FILE//,/ } -- \
        "$PYTHON" data/corpus.py --name="$CORPUS" ${CORPUS_FILE:+--file="$CORPUS_FILE"} --out_dir="$R/raw"
    stage data data/prepare.py data/bpe.py corpus -- \
        "$PYTHON" data/prepare.py --text_files="$R/raw/$CORPUS.txt" --out_dir="$R/text"
    stage alpaca data/alpaca.py $ALPACA_FILE -- \
        "$PYTHON" data/alpaca.py ${ALPACA_FILE:+--file="$ALPACA_FILE"} --out_dir="$R/alpaca"
    stage hh_rlhf data/hh_rlhf.py $HH_FILE -- \
        "$PYTHON" data/hh_rlhf.py ${HH_FILE:+--file="$HH_FILE"} --out_dir="$H"
    stage pretrain pretrain.py model.py data -- \
        $RUN pretrain.py --data_dir="$R/text" --out_dir="$OUT/pretrain"
    stage sft sft.py pretrain alpaca -- \
        $RUN sft.py --init_from="$OUT/pretrain" --data_dir="$R/text" --demos="$R/alpaca/sft.jsonl" --out_dir="$OUT/sft"
    stage reward reward.py sft hh_rlhf -- \
        $RUN reward.py --policy="$OUT/sft" --init_from="$OUT/sft" --n_prompts=0 --n_eval=0 \
        --rankings="$H/rankings.jsonl" --out_dir="$OUT/reward"
    # the judge: a reward model of the other half of the pairs; no stage reads it, only the report card
    stage judge reward.py sft hh_rlhf -- \
        $RUN reward.py --policy="$OUT/sft" --init_from="$OUT/sft" --n_prompts=0 --n_eval=0 \
        --rankings="$H/judge_rankings.jsonl" --out_dir="$OUT/judge"
    stage bestofk bestofk.py sft reward -- \
        $RUN bestofk.py --init_from="$OUT/sft" --reward_model="$OUT/reward" --prompt_file="$H/prompts.jsonl" \
        --eval_prompt_file="$H/eval_prompts.jsonl" --out_dir="$OUT/bestofk"
    stage dpo dpo.py sft hh_rlhf -- \
        $RUN dpo.py --init_from="$OUT/sft" --ref_from="$OUT/sft" --rankings="$H/rankings.jsonl" \
        --eval_rankings="$H/eval_rankings.jsonl" --out_dir="$OUT/dpo"
    stage rlhf rlhf.py sft reward -- \
        $RUN rlhf.py --init_from="$OUT/sft" --ref_from="$OUT/sft" --reward_model="$OUT/reward" \
        --prompt_file="$H/prompts.jsonl" --eval_prompt_file="$H/eval_prompts.jsonl" --out_dir="$OUT/rlhf"
    stage report report.py pretrain sft bestofk dpo rlhf reward judge -- \
        $RUN report.py --out_dir="$OUT" --prompt_file="$H/eval_prompts.jsonl" --eval_rankings="$H/eval_rankings.jsonl"
    echo "report card: $OUT/report.md"
    exit 0
fi

# Several seeds: each seed's whole chain in its own folder (its own lock, resumed and skipped as
# one chain is), the world and the held-out prompts the same, every other draw the seed's own
# (seed N: --seed=1336+N, so seed1 is the one-seed chain); then seeds.py pools their cards.
if [ "$SEEDS" != 1 ]; then
    for n in $(seq 1 "$SEEDS"); do
        echo "=== seed $n of $SEEDS: $OUT/seed$n"
        SEEDS=1 SEED=$((1336 + n)) OUT=$OUT/seed$n bash run.sh
    done
    stage report seeds.py model.py data/tasks.py $(seq -f 'seed%g/report' 1 "$SEEDS") -- \
        "$PYTHON" seeds.py --out_dir="$OUT" --seeds="$SEEDS"
    echo "report card of $SEEDS seeds: $OUT/report.md (each seed's: $OUT/seed<N>/report.md)"
    exit 0
fi

D=$OUT/data/world
stage data data/prepare.py data/world.py data/tasks.py data/bpe.py -- \
    "$PYTHON" data/prepare.py --out_dir="$D"
stage pretrain pretrain.py model.py data -- \
    $RUN pretrain.py --data_dir="$D" --out_dir="$OUT/pretrain"
stage sft sft.py pretrain -- \
    $RUN sft.py --init_from="$OUT/pretrain" --data_dir="$D" --demos="$D/sft.jsonl" --out_dir="$OUT/sft"
stage reward reward.py sft -- \
    $RUN reward.py --policy="$OUT/sft" --init_from="$OUT/sft" --out_dir="$OUT/reward"
bestofk() {
    stage bestofk bestofk.py sft reward -- \
        $RUN bestofk.py --init_from="$OUT/sft" --reward_model="$OUT/reward" --out_dir="$OUT/bestofk"
}
dpo() {
    stage dpo dpo.py sft reward -- \
        $RUN dpo.py --init_from="$OUT/sft" --ref_from="$OUT/sft" --rankings="$OUT/reward/rankings.jsonl" \
        --eval_rankings="$OUT/reward/eval_rankings.jsonl" --out_dir="$OUT/dpo"
}
rlhf() {
    stage rlhf rlhf.py sft reward -- \
        $RUN rlhf.py --init_from="$OUT/sft" --ref_from="$OUT/sft" --reward_model="$OUT/reward" --out_dir="$OUT/rlhf"
}
rloo() {  # PPO without a value model: RLOO's leave-one-out baseline (Ahmadian et al. 2024) over 4 answers per prompt
    stage rloo rlhf.py sft reward -- \
        $RUN rlhf.py --init_from="$OUT/sft" --ref_from="$OUT/sft" --reward_model="$OUT/reward" --advantage=rloo --out_dir="$OUT/rloo"
}
round2() {  # the reward model learns from the PPO policy's answers too, then PPO goes on against it
    stage reward2 reward.py rlhf reward -- \
        $RUN reward.py --policy="$OUT/rlhf" --init_from="$OUT/reward" --rankings="$OUT/reward/rankings.jsonl" --epochs=1 --out_dir="$OUT/reward2"
    stage rlhf2 rlhf.py rlhf reward2 -- \
        $RUN rlhf.py --init_from="$OUT/rlhf" --ref_from="$OUT/sft" --reward_model="$OUT/reward2" --out_dir="$OUT/rlhf2"
}
early_report() {  # the report's answers of the checkpoints made so far (report.py keeps them; the card reuses them)
    while [ ! -f "$OUT/rlhf/.done" ] && kill -0 "$1" 2>/dev/null; do sleep 1; done  # (PPO's, once its lane made it)
    local ppo=""
    [ -f "$OUT/rlhf/.done" ] && ppo=rlhf
    stage early_report report.py pretrain sft bestofk dpo rloo $ppo reward -- \
        $RUN report.py --out_dir="$OUT" --stages=pretrain,sft,bestofk,dpo,rloo${ppo:+,$ppo}
}
# Best-of-K, DPO, PPO and RLOO need only SFT and the RM. JOBS=1: one after the other. JOBS=2: two
# lanes at once, half the cores each: PPO and its second round (the longest path) beside the rest and
# the report's answers of what the rest and PPO made; each stage's output goes to $OUT/<stage>.log.
if [ "$JOBS" = 1 ]; then
    bestofk; dpo; rlhf; rloo; round2
else
    threads=$("$PYTHON" -c 'import os
print(max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) // 2))')
    echo "== after the RM, two lanes at once ($threads thread(s) each; JOBS=1: one stage at a time, on the screen)"
    (LANE=1; export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; rlhf; round2) & ppo_lane=$!
    (LANE=1; export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; bestofk; dpo; rloo; early_report $ppo_lane) &
    other_lane=$!
    trap 'pkill -P $ppo_lane; pkill -P $other_lane; kill $ppo_lane $other_lane 2>/dev/null
          [ "$(readlink "$LOCK")" = $$ ] && rm -f "$LOCK"' EXIT  # (Ctrl-C, an error: both lanes stop)
    failed=0  # (a lane that fails says so at once; the other finishes its stages, kept for the next run)
    wait $ppo_lane || failed=1
    wait $other_lane || failed=1
    trap '[ "$(readlink "$LOCK")" = $$ ] && rm -f "$LOCK"' EXIT
    [ $failed = 0 ] || exit 1
    stage_times  # (the two lanes wrote it at once: now from every stage's .done)
fi
stage report report.py pretrain sft bestofk dpo rlhf rloo rlhf2 reward reward2 -- \
    $RUN report.py --out_dir="$OUT"
echo "report card: $OUT/report.md"
