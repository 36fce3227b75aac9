"""Train and score one MNER configuration per benchmark; write ``benchmarks/results/mner_*.json``.

Each configuration is trained with ``riveg mner train`` and its best checkpoint is scored on
the dev split with ``riveg mner eval --json`` (with and without the ChatGPT knowledge), so the
numbers are exactly what the command line reports. ``--table`` prints the README table
generated from the result files, beside the paper's numbers (BERT-base, test split).

    python benchmarks/mner_benchmark.py --dataset twitter2017 --mode text --epochs 3
    python benchmarks/mner_benchmark.py --dataset twitter_gmner --mode knowledge --model DIR
    python benchmarks/mner_benchmark.py --table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = "services/mner/weights"  # the default model, as result files name it
RUNS = ROOT / "runs" / "bench"
DEFAULT_SEED = 13  # services.mner.train.TrainOptions' default; the table names any other

# Paper (RiVEG, Table: PLIM with BERT-base), test F1 in percent: (text only, with ChatGPT).
PAPER = {
    "twitter2015": (74.71, 76.79),
    "twitter2017": (84.96, 89.58),
    "twitter_gmner": (78.19, 82.89),
}
TARGETS = {"twitter2015": 0.74, "twitter2017": 0.86, "twitter_gmner": 0.81}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.mner.cli", *args]


def evaluate(model: Path, dataset: str, with_knowledge: bool, threads: int) -> dict:
    """``riveg mner eval --json`` on the dataset's dev split; its last stdout line."""
    sys.path.insert(0, str(ROOT))
    from services.mner.data import split_paths

    data, knowledge = split_paths(dataset, "dev")
    args = ["eval", "--data", str(data), "--model", str(model), "--json"]
    args += ["--threads", str(threads)]
    if with_knowledge:
        args += ["--knowledge", str(knowledge)]
    done = subprocess.run(_cli(*args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"eval failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> Path:
    """Train (unless --model is given), score both ways, write the result file."""
    name = f"mner_{args.dataset}_{args.mode}" + (f"_{args.tag}" if args.tag else "")
    model = Path(args.model) if args.model else RUNS / name / "best"
    train_info: dict = {}
    if not args.model:
        out = RUNS / name
        train_args = ["train", "--dataset", args.dataset, "--out", str(out)]
        train_args += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
        train_args += ["--lr", str(args.lr), "--knowledge-max", str(args.knowledge_max)]
        train_args += [
            "--case",
            args.case,
            "--seed",
            str(args.seed),
            "--threads",
            str(args.threads),
        ]
        if args.mode == "text":
            train_args.append("--no-knowledge")
        else:
            train_args += ["--knowledge-dropout", str(args.knowledge_dropout)]
            train_args += ["--select", args.select]
            if args.hints:
                train_args.append("--hints")
            if args.align:
                train_args += ["--align", str(args.align)]
        if args.resume:
            train_args.append("--resume")
        began = time.time()
        subprocess.run(_cli(*train_args), check=True)
        train_info = {"train_wall_s": round(time.time() - began, 1), "command": train_args}
    tagger = json.loads((model / "tagger.json").read_text())
    extra = tagger.get("extra", {})
    history = []
    metrics = Path(args.history) if args.history else model.parent / "metrics.jsonl"
    if metrics.is_file():
        history = [
            {k: v for k, v in json.loads(line).items() if k != "scores"}
            for line in metrics.read_text().splitlines()
        ]
    result = {
        "dataset": args.dataset,
        "mode": args.mode,
        "tag": args.tag,
        "split": "dev",
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
        "encoder": tagger.get("encoder_name"),
        "config": {
            k: tagger.get(k, False)
            for k in ("max_length", "knowledge_max", "case", "dropout", "hints")
        },
        "train": extra.get("train") or (extra.get("members") or [{}])[0].get("train"),
        # continued training (--init-model): the earlier run's options and dev scores
        "init_train": extra.get("init_train"),
        "init_dev": extra.get("init_dev"),
        # `riveg mner average`: the model folders / states whose weights were averaged
        "averaged": extra.get("averaged"),
        "members": extra.get("members"),
        "history": history,
        "dev_without_knowledge": evaluate(model, args.dataset, False, args.threads),
        "paper_test_f1": dict(zip(("text", "knowledge"), PAPER[args.dataset], strict=True)),
        "target_dev_f1_with_knowledge": TARGETS[args.dataset],
        **train_info,
    }
    if args.mode == "knowledge":
        result["dev_with_knowledge"] = evaluate(model, args.dataset, True, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def backend_score(name: str, dataset: str, with_knowledge: bool, model: str | None) -> Path:
    """Dev F1 of a serving backend on raw post text (character spans, exact match)."""
    import os

    sys.path.insert(0, str(ROOT))
    if model:
        os.environ["RIVEG_MNER_MODEL"] = model
    import services.mner.backends  # noqa: F401  (registers "crf")
    from riveg.core.config import load_settings
    from riveg.evaluation.spans import score_spans
    from services.mner.backends import MNER_BACKENDS
    from services.mner.data import load_split

    backend = MNER_BACKENDS.create(name, load_settings(models_torch_threads=2))
    backend.load()
    posts = load_split(dataset, "dev", with_knowledge=with_knowledge)
    knowledge = [" ".join(p.knowledge) or None for p in posts] if with_knowledge else None
    began = time.perf_counter()
    predicted = backend.recognize([p.text for p in posts], knowledge)
    seconds = time.perf_counter() - began
    gold = [[(e["start"], e["end"], e["type"]) for e in p.entities()] for p in posts]
    pred = [[(e["start"], e["end"], e["type"]) for e in ents] for ents in predicted]
    scores = score_spans(gold, pred)
    result = {
        "dataset": dataset,
        "split": "dev",
        "backend": name,
        "model": backend.model,
        "knowledge": with_knowledge,
        "path": "raw post text -> backend.recognize -> character spans",
        "posts_per_s": round(len(posts) / seconds, 1),
        **{k: scores[k] for k in ("precision", "recall", "f1", "n_gold", "n_pred")},
        "per_type": {
            k: {m: v[m] for m in ("precision", "recall", "f1", "n_gold", "n_pred")}
            for k, v in scores["per_type"].items()
        },
    }
    quantized = os.environ.get("RIVEG_MNER_QUANTIZE", "0") == "1" and name == "crf"
    result["quantize_int8"] = quantized
    suffix = ("_knowledge" if with_knowledge else "") + ("_int8" if quantized else "")
    path = RESULTS / f"mner_backend_{name}_{dataset}{suffix}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def robustness(dataset: str, model: str | None, seed: int = DEFAULT_SEED) -> Path:
    """Dev F1 of a model when the knowledge is degraded: none, cut short, or another post's."""
    import random

    sys.path.insert(0, str(ROOT))
    from services.mner.data import load_split
    from services.mner.evaluate import evaluate as score
    from services.mner.model import default_model_dir, load_tagger

    folder = Path(model) if model else default_model_dir()
    tagger, encoder = load_tagger(folder)
    posts = load_split(dataset, "dev")
    original = [p.knowledge for p in posts]
    shuffled = original[:]
    random.Random(seed).shuffle(shuffled)
    variants = {
        "full": original,
        "none": [[] for _ in posts],
        "first_24_words": [k[:24] for k in original],
        "first_8_words": [k[:8] for k in original],
        "another_posts": shuffled,
    }
    result: dict = {"dataset": dataset, "split": "dev", "model": str(folder), "f1": {}}
    for name, knowledge in variants.items():
        for post, k in zip(posts, knowledge, strict=True):
            post.knowledge = k
        result["f1"][name] = score(tagger, encoder, posts, True)["f1"]
    path = RESULTS / f"mner_robustness_{dataset}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def table() -> str:
    """Markdown table from the result files, beside the paper's numbers."""
    lines = [
        "| dataset | trained with | epochs | dev F1 without knowledge | dev F1 with knowledge "
        "| paper test F1 (BERT-base) text / +ChatGPT |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(RESULTS.glob("mner_*.json")):
        r = json.loads(path.read_text())
        if "mode" not in r or "dev_without_knowledge" not in r:
            continue
        without = r["dev_without_knowledge"]["f1"] * 100
        with_k = r.get("dev_with_knowledge", {}).get("f1")
        with_text = f"{with_k * 100:.2f}" if with_k is not None else "-"
        text_p, know_p = PAPER[r["dataset"]]
        members = r.get("members") or []
        epochs = len(r.get("history") or []) or "-"
        if members and not r.get("history"):  # a soup: each member's selected epoch
            epochs = " / ".join(str((m.get("dev") or {}).get("epoch", "?")) for m in members)
        if r.get("init_train"):
            epochs = f"{r['init_train']['epochs']} + {epochs}"
        mode = "text only"
        if r["mode"] == "knowledge":
            trains = [m.get("train") or {} for m in members] or [r.get("train") or {}]
            dropout = " / ".join(str(t.get("knowledge_dropout", "?")) for t in trains)
            mode = f"knowledge ≤ {r['config']['knowledge_max']} subwords, dropout {dropout}"
            if r["config"].get("hints"):
                mode += ", hints"
            aligns = [t.get("align") or 0 for t in trains]
            if any(aligns):
                mode += ", text view aligned (KL x " + " / ".join(str(a) for a in aligns) + ")"
            seeds = {t.get("seed", DEFAULT_SEED) for t in trains}
            if seeds != {DEFAULT_SEED}:
                mode += ", seed " + " / ".join(str(seed) for seed in sorted(seeds))
        if r.get("averaged"):
            mode += f", weight average of {len(r['averaged'])} models"
        if r.get("tag"):
            mode += f" [{r['tag']}, case={r['config']['case']}]"
        if r.get("model") == SHIPPED and not r.get("tag"):
            mode = f"**shipped default**: {mode}"
        lines.append(
            f"| {r['dataset']} | {mode} | {epochs} | {without:.2f} | {with_text} "
            f"| {text_p:.2f} / {know_p:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PAPER))
    parser.add_argument("--mode", choices=["text", "knowledge"], default="knowledge")
    parser.add_argument("--model", help="score this model folder instead of training")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--knowledge-max", type=int, default=64)
    parser.add_argument("--knowledge-dropout", type=float, default=0.4)
    parser.add_argument("--case", choices=["input", "head", "none"], default="input")
    parser.add_argument("--select", choices=["with", "without", "mean"], default="mean")
    parser.add_argument("--hints", action="store_true", help="knowledge-list hint embedding")
    parser.add_argument("--align", type=float, default=0.0, help="cross-view KL weight")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the run and result names")
    parser.add_argument("--history", help="metrics.jsonl of the run that made --model")
    parser.add_argument("--robustness", action="store_true", help="score degraded knowledge")
    parser.add_argument("--table", action="store_true", help="print the README table and exit")
    parser.add_argument("--backend", help="score a serving backend (spacy, crf) on raw dev text")
    args = parser.parse_args()
    if args.backend:
        dataset = args.dataset or "twitter_gmner"
        print(backend_score(args.backend, dataset, args.mode == "knowledge", args.model))
        return
    if args.robustness:
        print(robustness(args.dataset or "twitter_gmner", args.model))
        return
    if args.table:
        print(table())
        return
    if not args.dataset:
        parser.error("--dataset is required (or --table)")
    print(run(args))


if __name__ == "__main__":
    main()
