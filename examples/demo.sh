#!/usr/bin/env bash
# The medpg demo on the embedded PostgreSQL: load a slice of NFCorpus, embed it with the packaged
# MiniLM model, search it, and evaluate against its relevance judgments. Run through `make demo`,
# which sets MEDPG_DATA_DIR and MEDPG_MODEL_PROFILE. It ends by saying how to go on from here and
# writes them to medpg.toml in the checkout (when there is none yet) so later commands keep them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SAMPLE="$ROOT/examples/data/nfcorpus-sample"
DATA_DIR="${MEDPG_DATA_DIR:-$HOME/.medpg}"
PROFILE="${MEDPG_MODEL_PROFILE:-medcpt}"
SETTINGS_FILE="$ROOT/medpg.toml"
QUESTION="Do cholesterol statin drugs cause breast cancer?"
EMBED_LOG="$(mktemp)"
trap 'rm -f "$EMBED_LOG"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "schema (embedded PostgreSQL 18 + pgvector in $DATA_DIR)"
medpg db upgrade
step "ingest 600 NFCorpus documents"
medpg ingest "$SAMPLE/corpus.jsonl" --source nfcorpus-sample
step "ingest again: nothing changes"
medpg ingest "$SAMPLE/corpus.jsonl" --source nfcorpus-sample
step "status"
medpg status
step "embed in-process with the packaged MiniLM model (no Redis needed)"
embed_start=$EPOCHREALTIME
medpg embed | tee "$EMBED_LOG"
embed_wall=$(awk -v a="$embed_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
step "hybrid search: BM25 + dense, fused in PostgreSQL"
medpg search "$QUESTION" -k 5
step "the same question, lexical BM25 only"
medpg search "$QUESTION" -k 5 --mode lexical
step "evaluate every system on the sample's relevance judgments"
medpg eval "$SAMPLE" --no-progress -o "$DATA_DIR/demo_eval.md"

# --- how to go on -------------------------------------------------------------------------------
venv_bin="$(dirname "$(command -v medpg)")"
venv="${venv_bin%/bin}"
case "$venv" in "$ROOT"/*) venv="${venv#"$ROOT"/}" ;; esac
# A data directory inside the checkout is written relative to medpg.toml, so the file survives a move.
case "$DATA_DIR" in
  "$ROOT"/*) toml_dir="'${DATA_DIR#"$ROOT"/}'  # relative to this file" ;;
  *) toml_dir="'$DATA_DIR'" ;;
esac
embedded="$(grep -o 'embedded [0-9,]* chunks in [0-9.]*s ([0-9.,]* chunks/s)' "$EMBED_LOG" || true)"
cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"

step "done: how to go on from here"
echo "embedding on this machine ($cores CPU cores, MEDPG_DEVICE=${MEDPG_DEVICE:-auto}): ${embedded:-see above};"
echo "  ${embed_wall} s in all, with starting medpg and loading the model"
echo "the demo used:"
echo "  data directory  $DATA_DIR   (MEDPG_DATA_DIR)"
echo "  model profile   $PROFILE   (MEDPG_MODEL_PROFILE)"
if [[ ! -e "$SETTINGS_FILE" ]]; then
  cat >"$SETTINGS_FILE" <<EOF
# medpg settings, written by \`make demo\`: keys are the MEDPG_ settings without the prefix.
# medpg reads this file when it runs in this directory; MEDPG_ variables win over it.
data_dir = $toml_dir
model_profile = '$PROFILE'
EOF
  echo "wrote them to $SETTINGS_FILE, which keeps them: medpg reads it whenever it runs in"
  echo "$ROOT (copy it to ~/.config/medpg/medpg.toml to use them from any directory)."
else
  echo "$SETTINGS_FILE already exists and was left as it is; to keep these choices, it should hold:"
  echo "  data_dir = \"$DATA_DIR\""
  echo "  model_profile = \"$PROFILE\""
fi
echo
echo "to go on, in $ROOT:"
echo "  source $venv/bin/activate"
echo "  medpg search \"statins and breast cancer\" -k 5"
echo "in another directory, without medpg.toml there, set the same two first:"
echo "  export MEDPG_DATA_DIR=\"$DATA_DIR\" MEDPG_MODEL_PROFILE=$PROFILE"
echo "(the evaluation above is in $DATA_DIR/demo_eval.md; \`make clean-demo\` removes the data directory)"
