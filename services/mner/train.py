"""Training loop: seeded, length-bucketed batches, knowledge dropout, dev score each epoch,
best checkpoint kept (fp16 export), resumable from the last finished epoch."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from riveg.data.conll import Post
from services.mner.data import LABEL_IDS
from services.mner.evaluate import evaluate
from services.mner.model import (
    CrfTagger,
    TaggerConfig,
    WordEncoder,
    cross_view_kl,
    load_tagger,
    new_tagger,
    save_tagger,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass
class TrainOptions:
    """Optimisation knobs (saved in the model's ``tagger.json`` under ``extra.train``)."""

    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    warmup: float = 0.1
    weight_decay: float = 0.01
    knowledge_dropout: float = 0.3
    knowledge_noise: float = 0.0  # fraction of knowledge batches given other posts' knowledge
    # > 0: knowledge batches also train the text-only view, pulled towards the knowledge view
    # by this weight times KL(with || without) per word (cross-view alignment, as in ITA)
    align: float = 0.0
    select: str = "mean"  # with | without | mean (of the dev F1 with and without knowledge)
    seed: int = 13
    eval_batch_size: int = 64
    max_train_posts: int = 0  # 0 = all (smoke runs use fewer)

    def __post_init__(self) -> None:
        if self.select not in ("with", "without", "mean"):
            raise ValueError(f"select must be with, without or mean, not {self.select!r}")
        if not 0.0 <= self.knowledge_dropout <= 1.0:
            raise ValueError("knowledge_dropout must lie in [0, 1]")
        if not 0.0 <= self.knowledge_noise <= 1.0:
            raise ValueError("knowledge_noise must lie in [0, 1]")
        if self.align < 0.0:
            raise ValueError("align must not be negative")


def seed_everything(seed: int) -> None:
    """Seed python and torch."""
    random.seed(seed)
    torch.manual_seed(seed)


def make_batches(
    lengths: list[int], batch_size: int, rng: random.Random, bucket: int = 20
) -> list[list[int]]:
    """Shuffled batches of indices, each drawn from a length-sorted bucket (less padding)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * bucket
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def dev_scores(
    tagger: CrfTagger, encoder: WordEncoder, dev: list[Post], batch_size: int
) -> dict[str, Any]:
    """Dev F1 (and full scores) with knowledge (when the dev posts have any) and without."""
    scores: dict[str, Any] = {"without": evaluate(tagger, encoder, dev, False, batch_size)}
    if any(p.knowledge for p in dev):
        scores["with"] = evaluate(tagger, encoder, dev, True, batch_size)
    return scores


def selection_score(scores: dict[str, Any], select: str) -> float:
    """The number a checkpoint is selected on."""
    if select == "mean" and "with" in scores:
        return (scores["with"]["f1"] + scores["without"]["f1"]) / 2
    if select == "with" and "with" in scores:
        return scores["with"]["f1"]
    return scores["without"]["f1"]


def aligned_loss(
    tagger: CrfTagger,
    batch: dict[str, torch.Tensor],
    encoder: WordEncoder,
    text_only: list[dict[str, Any]],
    labels: list[list[int]],
    weight: float,
) -> torch.Tensor:
    """Both views' CRF losses plus ``weight`` x KL pulling the text-only view's per-word
    label distribution towards the knowledge view's."""
    plain = encoder.collate(text_only, labels)
    with_scores, plain_scores = tagger.emissions(batch), tagger.emissions(plain)
    kl = cross_view_kl(plain_scores, with_scores, plain["word_mask"], batch["word_mask"])
    return tagger.nll(with_scores, batch) + tagger.nll(plain_scores, plain) + weight * kl


def train(
    train_posts: list[Post],
    dev_posts: list[Post],
    out_dir: str | Path,
    encoder_dir: str | Path,
    config: TaggerConfig,
    options: TrainOptions,
    resume: bool = False,
    init_model: str | Path | None = None,
) -> dict[str, Any]:
    """Train, keeping ``out_dir/best`` (fp16 model folder) and ``out_dir/last/state.pt``.

    ``init_model`` starts from a saved model folder (its weights and settings) instead of the
    bare encoder, with a fresh optimiser and schedule (continued training)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(options.seed)
    if options.max_train_posts:
        train_posts = train_posts[: options.max_train_posts]
    if init_model is not None:
        tagger, encoder = load_tagger(init_model)
        if config.hints and not tagger.config.hints:
            tagger.add_hints()
            encoder.hints = True
        previous = tagger.config.extra
        tagger.config.extra = {"train": asdict(options), "init_model": str(init_model)}
        tagger.config.extra["init_train"] = previous.get("train")
        tagger.config.extra["init_dev"] = previous.get("dev")
    else:
        config.extra = {**config.extra, "train": asdict(options)}
        tagger, encoder = new_tagger(encoder_dir, config)

    labels = [[LABEL_IDS[t] for t in p.tags] for p in train_posts]
    with_k = [encoder.encode(p.tokens, p.knowledge or None) for p in train_posts]
    without_k = [encoder.encode(p.tokens) for p in train_posts]

    encoder_params = [p for n, p in tagger.named_parameters() if n.startswith("encoder.")]
    head_params = [p for n, p in tagger.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": options.lr},
            {"params": head_params, "lr": options.head_lr},
        ],
        weight_decay=options.weight_decay,
    )
    steps_per_epoch = -(-len(train_posts) // options.batch_size)
    total = steps_per_epoch * options.epochs
    warmup = int(total * options.warmup)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    history: list[dict[str, Any]] = []
    best, start_epoch = -1.0, 0
    state_path = out / "last" / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        tagger.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        log.info("resumed after epoch %d (best %.4f)", start_epoch, best)
    elif resume:
        log.info("nothing to resume in %s; starting afresh", out)

    for epoch in range(start_epoch, options.epochs):
        rng = random.Random(options.seed * 1000 + epoch)
        torch.manual_seed(options.seed * 1000 + epoch)
        lengths = [len(e["input_ids"]) for e in with_k]
        batches = make_batches(lengths, options.batch_size, rng)
        drops = [rng.random() < options.knowledge_dropout for _ in batches]
        noise_rng = random.Random(options.seed * 7919 + epoch)
        noisy = [noise_rng.random() < options.knowledge_noise for _ in batches]
        tagger.train()
        began, total_loss = time.time(), 0.0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{options.epochs}", file=sys.stderr)
        for step, (batch_ids, drop) in enumerate(zip(bar, drops, strict=True)):
            if drop:
                items = [without_k[i] for i in batch_ids]
            elif noisy[step]:  # knowledge of other posts: learn to ignore unrelated knowledge
                others = [noise_rng.randrange(len(train_posts)) for _ in batch_ids]
                items = [
                    encoder.encode(train_posts[i].tokens, train_posts[j].knowledge or None)
                    for i, j in zip(batch_ids, others, strict=True)
                ]
            else:
                items = [with_k[i] for i in batch_ids]
            batch_labels = [labels[i] for i in batch_ids]
            batch = encoder.collate(items, batch_labels)
            if options.align > 0 and not drop:
                text_only = [without_k[i] for i in batch_ids]
                loss = aligned_loss(tagger, batch, encoder, text_only, batch_labels, options.align)
            else:
                loss = tagger.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tagger.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item()
            bar.set_postfix(loss=f"{total_loss / (step + 1):.3f}")
        train_s = time.time() - began
        scores = dev_scores(tagger, encoder, dev_posts, options.eval_batch_size)
        score = selection_score(scores, options.select)
        record = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(1, len(batches)),
            "train_s": round(train_s, 1),
            "eval_s": round(time.time() - began - train_s, 1),
            "dev_f1_without": scores["without"]["f1"],
            "dev_f1_with": scores["with"]["f1"] if "with" in scores else None,
            "selection": score,
        }
        history.append(record)
        log.info("epoch %s", json.dumps(record))
        with (out / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps({**record, "scores": scores}) + "\n")
        if score > best:
            best = score
            tagger.config.extra["dev"] = {**record}
            save_tagger(tagger, encoder.tokenizer, out / "best", fp16=True)
        (out / "last").mkdir(exist_ok=True)
        torch.save(
            {
                "model": tagger.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "best": best,
                "epoch": epoch,
            },
            state_path,
        )
    summary = {"best_selection": best, "history": history, "best_dir": str(out / "best")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
