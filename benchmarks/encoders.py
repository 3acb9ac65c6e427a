"""Article-encoder throughput: medpg's encoder vs the plain loop of the model cards, on NFCorpus.

Question: how many documents per second does medpg's article encoder (length-sorted token-budget
batches, ``torch.inference_mode``, no padding beyond each batch's longest input) encode on this
machine, compared with the loop the MedCPT model card shows (fixed-size batches in corpus order,
padded to the longest), and are the embeddings the same?

Two models:

* ``bert-base``: a random BERT-base (``BertConfig()``: 12 layers, 768 hidden, 30522 vocab) — the same
  shape and compute as MedCPT's article encoder, whose weights are not reachable here — saved with the
  packaged MiniLM tokenizer (bert-base-uncased WordPiece) and loaded through the medcpt profile.
  Plain loop: the MedCPT card's, ``tokenizer(pairs, truncation=True, padding=True, max_length=512)``
  then ``last_hidden_state[:, 0, :]`` under ``torch.no_grad``.
* ``minilm``: the packaged all-MiniLM-L6-v2 through the minilm profile. Plain loop: the model card's
  transformers usage (mean pooling, L2 normalization, max 256 tokens as the model is configured) on
  ``"title. text"``, fixed-size batches in corpus order.

Each run times the plain loop and medpg's encoder back to back on the same loaded weights; the table
reports medians over the runs. Writes the markdown report to ``--output``.

    python benchmarks/encoders.py                 # full run (~15 min on 2 quiet cores)
    python benchmarks/encoders.py --limit 32 --minilm-limit 128 --runs 1 --output /dev/stdout  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402

from medpg.config import Settings  # noqa: E402
from medpg.encoders import load_article_encoder, packaged_minilm_path  # noqa: E402
from medpg.encoders.batching import token_budget_batches  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "nfcorpus" / "corpus.jsonl"


@dataclass
class Result:
    model: str
    docs: int
    batch_size: int
    max_tokens_per_batch: int
    plain: list[float] = field(default_factory=list)  # documents/s per run
    medpg: list[float] = field(default_factory=list)
    plain_cpu: list[float] = field(default_factory=list)  # documents per CPU-second of this process
    medpg_cpu: list[float] = field(default_factory=list)
    max_abs_diff: float = 0.0
    allclose: bool = True  # over every run
    real_tokens: int = 0
    plain_padded: int = 0
    medpg_padded: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # lowest and highest 1-minute load average seen
    attention: str = ""


def read_corpus(path: Path, limit: int) -> tuple[list[str], list[str]]:
    titles, texts = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            titles.append(row.get("title") or "")
            texts.append(row.get("text") or "")
            if len(titles) >= limit:
                break
    return titles, texts


def build_bert_base(work: Path) -> Path:
    """A random BERT-base with the bert-base-uncased WordPiece tokenizer (MedCPT's shape)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    target = work / "random-bert-base"
    if (target / "model.safetensors").is_file():
        return target
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(packaged_minilm_path())).save_pretrained(str(target))
    return target


def plain_medcpt(
    tokenizer: object, model: object, titles: list[str], texts: list[str], bs: int
) -> np.ndarray:
    """The MedCPT article-encoder card's loop, in fixed-size batches in corpus order."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(titles), bs):
            batch = zip(titles[start : start + bs], texts[start : start + bs], strict=True)
            pairs = [[t, x] for t, x in batch]
            encoded = tokenizer(  # type: ignore[operator]
                pairs, truncation=True, padding=True, return_tensors="pt", max_length=512
            )
            out.append(model(**encoded).last_hidden_state[:, 0, :].numpy())  # type: ignore[operator]
    return np.vstack(out)


def plain_minilm(
    tokenizer: object, model: object, titles: list[str], texts: list[str], bs: int
) -> np.ndarray:
    """The all-MiniLM-L6-v2 card's transformers loop: mean pooling and L2 normalization."""
    import torch

    docs = [f"{t}. {x}" if t else x for t, x in zip(titles, texts, strict=True)]
    out = []
    with torch.no_grad():
        for start in range(0, len(docs), bs):
            encoded = tokenizer(  # type: ignore[operator]
                docs[start : start + bs], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            tokens = model(**encoded).last_hidden_state  # type: ignore[operator]
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
    return np.vstack(out)


def padding_stats(lengths: list[int], bs: int, max_tokens: int) -> tuple[int, int, int]:
    plain = sum(max(lengths[i : i + bs]) * len(lengths[i : i + bs]) for i in range(0, len(lengths), bs))
    ours = sum(lengths[b[0]] * len(b) for b in token_budget_batches(lengths, bs, max_tokens))
    return sum(lengths), plain, ours


def bench(
    name: str,
    settings: Settings,
    plain: Callable[[object, object, list[str], list[str], int], np.ndarray],
    parts: Callable[[object], tuple[object, object, int]],
    titles: list[str],
    texts: list[str],
    runs: int,
) -> Result:
    encoder = load_article_encoder(settings)
    tokenizer, model, max_len = parts(encoder)
    bs = settings.encode_batch_size
    result = Result(name, len(titles), bs, settings.max_tokens_per_batch)
    result.attention = str(getattr(model.config, "_attn_implementation", "unknown"))  # type: ignore[attr-defined]
    if name == "bert-base":
        enc = tokenizer(titles, texts, truncation=True, max_length=max_len)  # type: ignore[operator]
    else:
        docs = [f"{t}. {x}" if t else x for t, x in zip(titles, texts, strict=True)]
        enc = tokenizer(docs, truncation=True, max_length=max_len)  # type: ignore[operator]
    lengths = [len(ids) for ids in enc["input_ids"]]
    result.real_tokens, result.plain_padded, result.medpg_padded = padding_stats(
        lengths, bs, settings.max_tokens_per_batch
    )
    # warm up both paths (first-call allocations, oneDNN kernel selection)
    plain(tokenizer, model, titles[:4], texts[:4], bs)
    encoder.encode_documents(titles[:4], texts[:4])
    loads = [os.getloadavg()[0]]
    for run in range(runs):
        # Alternate which path goes first so slow drifts in machine load hit both alike.
        for path in ("plain", "medpg") if run % 2 == 0 else ("medpg", "plain"):
            start, cpu = time.perf_counter(), time.process_time()
            if path == "plain":
                reference = plain(tokenizer, model, titles, texts, bs)
                result.plain.append(len(titles) / (time.perf_counter() - start))
                result.plain_cpu.append(len(titles) / (time.process_time() - cpu))
            else:
                ours = encoder.encode_documents(titles, texts)
                result.medpg.append(len(titles) / (time.perf_counter() - start))
                result.medpg_cpu.append(len(titles) / (time.process_time() - cpu))
            loads.append(os.getloadavg()[0])
        diff = float(np.max(np.abs(reference - ours)))
        result.max_abs_diff = max(result.max_abs_diff, diff)
        result.allclose = result.allclose and bool(np.allclose(reference, ours, atol=1e-4))
        print(
            f"{name} run {run + 1}/{runs}: plain {result.plain[-1]:.2f} docs/s, "
            f"medpg {result.medpg[-1]:.2f} docs/s, max |diff| {diff:.2e}",
            file=sys.stderr,
            flush=True,
        )
    result.load = (min(loads), max(loads))
    return result


def machine_notes() -> list[str]:
    import sentence_transformers
    import torch
    import transformers

    cpu = cpu_model()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, no GPU",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, sentence-transformers {sentence_transformers.__version__}",
    ]


def report(results: list[Result], command: str, corpus: Path, runs: int) -> str:
    lines = [
        "# Article encoder throughput (NFCorpus, CPU)",
        "",
        "```",
        command,
        "```",
        "",
        *machine_notes(),
        f"- corpus: `{corpus.name}` (BEIR NFCorpus), first N documents in corpus order; "
        f"{runs} runs, medians reported; each run times both paths back to back on the same weights",
        "",
        "| model | docs | plain loop docs/s (median) | medpg docs/s (median) | speed-up | "
        "speed-up per CPU-second | max abs diff | allclose(atol=1e-4) | "
        "padded tokens / real tokens: plain → medpg |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        plain, ours = statistics.median(r.plain), statistics.median(r.medpg)
        cpu_ratio = statistics.median(r.medpg_cpu) / statistics.median(r.plain_cpu)
        lines.append(
            f"| {r.model} | {r.docs} | {plain:.2f} | {ours:.2f} | **{ours / plain:.2f}x** | {cpu_ratio:.2f}x | "
            f"{r.max_abs_diff:.1e} | {'yes' if r.allclose else 'NO'} | "
            f"{r.plain_padded / r.real_tokens:.2f} → {r.medpg_padded / r.real_tokens:.2f} |"
        )
    lines += ["", "Per-run documents/s (plain / medpg):", ""]
    for r in results:
        pairs = ", ".join(f"{p:.2f} / {m:.2f}" for p, m in zip(r.plain, r.medpg, strict=True))
        lines.append(
            f"- {r.model} (batch size {r.batch_size}, {r.max_tokens_per_batch} tokens/batch, "
            f"{r.attention} attention): {pairs}; "
            f"load average during the runs {r.load[0]:.1f}–{r.load[1]:.1f}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, default=200, help="documents for the BERT-base model")
    parser.add_argument("--minilm-limit", type=int, default=1000, help="documents for MiniLM")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="plain loop batch size and medpg's cap")
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    parser.add_argument("--models", default="bert-base,minilm")
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "encoders.md")
    args = parser.parse_args()

    if not args.corpus.is_file():
        sys.exit(f"corpus not found: {args.corpus} (pass --corpus path/to/nfcorpus/corpus.jsonl)")
    common = {
        "_env_file": None,
        "device": "cpu",
        "hf_offline": True,
        "encode_batch_size": args.batch_size,
        "max_tokens_per_batch": args.max_tokens_per_batch,
    }
    results = []
    models = args.models.split(",")
    if "bert-base" in models:
        titles, texts = read_corpus(args.corpus, args.limit)
        model_dir = build_bert_base(args.work_dir)
        settings = Settings(  # type: ignore[call-arg]
            **common, model_profile="medcpt", article_model=str(model_dir), embedding_dim=768
        )
        parts = lambda enc: (enc.backbone.tokenizer, enc.backbone.model, 512)  # noqa: E731
        results.append(bench("bert-base", settings, plain_medcpt, parts, titles, texts, args.runs))
    if "minilm" in models:
        titles, texts = read_corpus(args.corpus, args.minilm_limit)
        settings = Settings(**common, model_profile="minilm")  # type: ignore[call-arg]
        parts = lambda enc: (enc.model.tokenizer, enc.model[0].auto_model, enc.max_tokens)  # noqa: E731
        results.append(bench("minilm", settings, plain_minilm, parts, titles, texts, args.runs))

    command = "python benchmarks/encoders.py " + " ".join(sys.argv[1:])
    text = report(results, command.strip(), args.corpus, args.runs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
