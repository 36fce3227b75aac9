"""LLM stage measurements on Twitter-GMNER dev (results in benchmarks/results/llm_*.json).

    RIVEG_MODELS_TORCH_THREADS=1 nice -n 10 python benchmarks/llm_benchmark.py --posts 100 \
        --expand-posts 30 --budget-s 3000

1. replay hit rate: every dev post's text looked up in the released ChatGPT knowledge;
2. local backend speed (Gemma-3-270M, cache off): latency and tokens/s per knowledge paragraph
   (MSEA prompt with the 5 most similar annotated examples, image = the released mPLUG-Owl
   caption, since tweet images are not distributed) and per entity expansion (gold entities);
3. MNER dev F1 of the shipped model (``riveg mner eval``) on the first N dev posts with knowledge
   from Gemma, from replayed ChatGPT, and with none. The knowledge files are written under
   --work (sentence-aligned, as the released ones) and never into the repository.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(latencies: list[float], tokens: list[int]) -> dict:
    total_s = sum(latencies)
    return {
        "n": len(latencies),
        "latency_ms_median": round(statistics.median(latencies) * 1000, 1),
        "latency_ms_p90": round(_pct(latencies, 0.9) * 1000, 1),
        "new_tokens_mean": round(sum(tokens) / max(1, len(tokens)), 1),
        "tokens_per_s": round(sum(tokens) / total_s, 1) if total_s else 0.0,
    }


def write_conll(posts, path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for post in posts:
            out.write(f"IMGID:{post.id}\n")
            out.writelines(f"{t}\t{g}\n" for t, g in zip(post.tokens, post.tags, strict=True))
            out.write("\n")


def write_knowledge(posts, knowledge: dict[str, str], path: Path) -> None:
    """Sentence-aligned knowledge file (tokens, <EOS>, knowledge words), like the release."""
    with path.open("w", encoding="utf-8") as out:
        for post in posts:
            out.writelines(f"{t}\tO\n" for t in post.tokens)
            words = knowledge.get(post.id, "").split()
            if words:
                out.write("<EOS>\tX\n")
                out.writelines(f"{w}\tX\n" for w in words)
            out.write("\n")


def mner_eval(data: Path, knowledge: Path | None) -> dict:
    command = [sys.executable, "-m", "services.mner.cli", "eval", "--data", str(data), "--json"]
    if knowledge is not None:
        command += ["--knowledge", str(knowledge)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"mner eval failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: result[k] for k in ("precision", "recall", "f1", "n_gold", "n_pred")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posts", type=int, default=100, help="dev posts for knowledge + F1")
    parser.add_argument("--expand-posts", type=int, default=10, help="dev posts for expansions")
    parser.add_argument("--budget-s", type=float, default=3000, help="time for knowledge")
    parser.add_argument("--f1-posts", type=int, default=1500, help="dev posts for replay/none F1")
    parser.add_argument("--work", type=Path, default=Path("/tmp/riveg-llm-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "llm_twitter_gmner_dev.json")
    args = parser.parse_args()

    from riveg.core.config import load_settings
    from riveg.data.captions import read_captions_mplug
    from services.llm.backends import create_backend
    from services.llm.replay import ReplayIndex, knowledge_files
    from services.mner.data import load_split, split_paths

    args.work.mkdir(parents=True, exist_ok=True)
    dev = load_split("twitter_gmner", "dev", with_knowledge=True)
    data_file, _ = split_paths("twitter_gmner", "dev")
    captions = read_captions_mplug(data_file.parent / "captions_mplug_owl" / "dev.txt")
    report: dict = {"dataset": "twitter_gmner dev", "machine": "2 shared CPU cores, no GPU"}

    # 1. replay hit rate over the whole dev split
    index = ReplayIndex(knowledge_files())
    hits = [p for p in dev if p.text in index]
    exact = sum(index.lookup(p.text) == " ".join(p.knowledge) for p in hits if p.knowledge)
    report["replay"] = {
        "posts": len(dev),
        "hits": len(hits),
        "hit_rate": round(len(hits) / len(dev), 4),
        "hits_equal_to_aligned_record": exact,
        "posts_with_aligned_knowledge": sum(bool(p.knowledge) for p in dev),
    }
    print(json.dumps(report["replay"]), file=sys.stderr)

    # 2. Gemma speed, cache off
    settings = load_settings(llm_cache=False)
    report["torch_threads"] = settings.models.torch_threads or "torch default"
    gemma = create_backend("gemma", settings)
    started = time.perf_counter()
    gemma.load()
    report["gemma_load_s"] = round(time.perf_counter() - started, 2)
    gemma.examples.selector()  # MSEA pool ready before timing

    e_lat, e_tok, batch_lat, n_entities = [], [], [], 0
    for post in dev[: args.expand_posts]:
        entities = post.entities()
        if not entities:
            continue
        prompts = gemma.expand_prompts(post.text, entities)
        for prompt in prompts:  # one entity per call
            began = time.perf_counter()
            [generation] = gemma.generate([prompt], settings.llm.max_new_tokens, ["\n"])
            e_lat.append(time.perf_counter() - began)
            e_tok.append(generation.completion_tokens)
        began = time.perf_counter()  # all entities of the post in one batch (as served)
        gemma.generate(prompts, settings.llm.max_new_tokens, ["\n"])
        batch_lat.append((time.perf_counter() - began) / len(prompts))
        n_entities += len(prompts)
    report["gemma_expand"] = _summary(e_lat, e_tok) | {
        "batched_per_entity_ms_median": round(statistics.median(batch_lat) * 1000, 1),
        "posts": args.expand_posts,
        "max_new_tokens": settings.llm.max_new_tokens,
    }
    print(json.dumps(report["gemma_expand"]), file=sys.stderr)

    # knowledge paragraphs, kept one JSON line per post in --work (a rerun resumes)
    posts = dev[: args.posts]
    done_file = args.work / "gemma_knowledge.jsonl"
    records = {}
    if done_file.is_file():
        records = {r["id"]: r for r in map(json.loads, done_file.read_text().splitlines())}
    deadline = time.monotonic() + args.budget_s
    with done_file.open("a", encoding="utf-8") as sink:
        for i, post in enumerate(posts):
            if post.id in records:
                continue
            if time.monotonic() > deadline:
                print(f"time budget spent after {len(records)} posts", file=sys.stderr)
                break
            prompt = gemma.knowledge_prompt(post.text, captions.get(post.id, ""))
            began = time.perf_counter()
            [generation] = gemma.generate([prompt], settings.llm.knowledge_max_new_tokens, ["\n"])
            record = {
                "id": post.id,
                "knowledge": generation.text.strip(),
                "s": time.perf_counter() - began,
                "new_tokens": generation.completion_tokens,
                "prompt_tokens": generation.prompt_tokens,
            }
            records[post.id] = record
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            print(f"knowledge {i + 1}/{len(posts)} {record['s']:.1f}s", file=sys.stderr)
    timed = list(records.values())
    report["gemma_knowledge"] = _summary([r["s"] for r in timed], [r["new_tokens"] for r in timed])
    report["gemma_knowledge"] |= {
        "prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in timed), 1),
        "examples_per_prompt": settings.llm.examples,
        "max_new_tokens": settings.llm.knowledge_max_new_tokens,
    }
    knowledge = {k: r["knowledge"] for k, r in records.items()}
    print(json.dumps(report["gemma_knowledge"]), file=sys.stderr)

    # 3. MNER dev F1: on the posts that got Gemma knowledge, and on all --posts posts
    replayed = {p.id: index.lookup(p.text) for p in dev if p.text in index}
    report["mner_f1"] = {"model": "services/mner/weights (the shipped crf model)"}
    subsets = {"gemma_posts": [p for p in posts if p.id in knowledge]}
    subsets["all_dev_posts"] = dev[: args.f1_posts]
    for name, subset in subsets.items():
        data = args.work / f"dev_{name}.txt"
        write_conll(subset, data)
        replay_file = args.work / f"knowledge_replay_{name}.txt"
        write_knowledge(subset, replayed, replay_file)
        scores = {"posts": len(subset)}
        if name == "gemma_posts":
            gemma_file = args.work / "knowledge_gemma.txt"
            write_knowledge(subset, knowledge, gemma_file)
            scores["gemma_knowledge"] = mner_eval(data, gemma_file)
        scores["chatgpt_replay_knowledge"] = mner_eval(data, replay_file)
        scores["no_knowledge"] = mner_eval(data, None)
        report["mner_f1"][name] = scores
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
