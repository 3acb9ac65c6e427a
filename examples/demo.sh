#!/usr/bin/env bash
# The medpg demo on the embedded PostgreSQL: load a slice of NFCorpus, embed it with the packaged
# MiniLM model, search it, and evaluate against its relevance judgments. Run through `make demo`.
set -euo pipefail
SAMPLE="$(dirname "$0")/data/nfcorpus-sample"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "schema (embedded PostgreSQL 18 + pgvector in ${MEDPG_DATA_DIR:-~/.medpg})"
medpg db upgrade
step "ingest 600 NFCorpus documents"
medpg ingest "$SAMPLE/corpus.jsonl" --source nfcorpus-sample
step "ingest again: nothing changes"
medpg ingest "$SAMPLE/corpus.jsonl" --source nfcorpus-sample
step "status"
medpg status
step "embed in-process with the packaged MiniLM model (no Redis needed)"
medpg embed
step "hybrid search: BM25 + dense, fused in PostgreSQL"
medpg search "Do cholesterol statin drugs cause breast cancer?" -k 5
step "the same question, lexical BM25 only"
medpg search "Do cholesterol statin drugs cause breast cancer?" -k 5 --mode lexical
step "evaluate every system on the sample's relevance judgments"
medpg eval "$SAMPLE" --no-progress -o "${MEDPG_DATA_DIR:-$HOME/.medpg}/demo_eval.md"
