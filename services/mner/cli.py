"""``riveg mner``: train and score the encoder + CRF MNER model."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
from transformers.utils import logging as hf_logging

from riveg.core.cli import F
from riveg.core.config import get_settings
from services.mner.data import load_posts, split_paths
from services.mner.evaluate import predict_spans, score_posts
from services.mner.model import (
    TaggerConfig,
    average_taggers,
    default_encoder_dir,
    default_model_dir,
    load_tagger,
    save_tagger,
)
from services.mner.msea import ExampleSelector
from services.mner.train import TrainOptions, train

_FILE = click.Path(exists=True, dir_okay=False)
_FOLDER = click.Path(exists=True, file_okay=False)
_threads_option = click.option(
    "--threads", type=int, default=None, help="torch threads (default RIVEG_MODELS_TORCH_THREADS)"
)


def _out_dir_option(help_text: str) -> Callable[[F], F]:
    """The required ``--out`` option (parameter ``out_dir``): a folder the command writes."""
    return click.option(
        "--out", "out_dir", required=True, type=click.Path(file_okay=False), help=help_text
    )


def _threads(threads: int | None) -> None:
    count = threads if threads is not None else get_settings().models.torch_threads
    if count and count > 0:
        torch.set_num_threads(count)


def _quiet_transformers() -> None:
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@click.group("mner")
def mner_group() -> None:
    """The PLIM-style MNER model: encoder + CRF over the post and LLM knowledge."""


@mner_group.command("train")
@click.option(
    "--dataset",
    type=click.Choice(["twitter2015", "twitter2017", "twitter_gmner"]),
    help="a benchmark under the shared datasets folder (train on train, select on dev)",
)
@click.option("--train", "train_file", type=_FILE)
@click.option("--train-knowledge", type=_FILE)
@click.option("--dev", "dev_file", type=_FILE)
@click.option("--dev-knowledge", type=_FILE)
@click.option("--no-knowledge", is_flag=True, help="train and select text-only")
@click.option(
    "--encoder",
    type=_FOLDER,
    help="Hugging Face encoder folder (default: the shipped MiniLM-L6)",
)
@_out_dir_option("run folder: best/ (the model), last/ (resume state), metrics.jsonl")
@click.option("--epochs", default=4, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=5e-5, show_default=True)
@click.option("--head-lr", default=1e-3, show_default=True)
@click.option(
    "--knowledge-dropout",
    default=0.3,
    show_default=True,
    help="fraction of batches trained without knowledge",
)
@click.option(
    "--knowledge-noise",
    default=0.0,
    show_default=True,
    help="fraction of knowledge batches given other posts' knowledge",
)
@click.option(
    "--align",
    default=0.0,
    show_default=True,
    help="train the text-only view on knowledge batches too, pulled towards the knowledge "
    "view by this weight x KL (0: off)",
)
@click.option("--max-length", default=256, show_default=True, help="subwords per sequence")
@click.option("--knowledge-max", default=200, show_default=True, help="knowledge subwords kept")
@click.option(
    "--case",
    type=click.Choice(["input", "head", "none"]),
    default="input",
    show_default=True,
    help="how the uncased encoder gets casing back",
)
@click.option(
    "--hints/--no-hints",
    default=False,
    show_default=True,
    help="embed what the knowledge's entity list says of each post word",
)
@click.option(
    "--select",
    type=click.Choice(["with", "without", "mean"]),
    default="mean",
    show_default=True,
    help="dev F1 the best checkpoint is chosen on",
)
@click.option("--seed", default=13, show_default=True)
@click.option("--max-train-posts", default=0, help="use only the first N training posts")
@click.option("--resume", is_flag=True, help="continue after the last finished epoch")
@click.option(
    "--init-model",
    type=_FOLDER,
    help="start from this saved model (fresh optimiser and schedule)",
)
@_threads_option
@click.option("--json", "as_json", is_flag=True)
def train_command(**kw: Any) -> None:
    """Train an MNER model; the best dev checkpoint is written to OUT/best."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    _threads(kw["threads"])
    _quiet_transformers()
    if kw["dataset"]:
        train_file, train_k = split_paths(kw["dataset"], "train")
        dev_file, dev_k = split_paths(kw["dataset"], "dev")
    elif kw["train_file"] and kw["dev_file"]:
        train_file, train_k = kw["train_file"], kw["train_knowledge"]
        dev_file, dev_k = kw["dev_file"], kw["dev_knowledge"]
    else:
        raise click.UsageError("give --dataset, or --train and --dev files")
    if kw["no_knowledge"]:
        train_k = dev_k = None
    try:
        train_posts = load_posts(train_file, train_k)
        dev_posts = load_posts(dev_file, dev_k)
        config = TaggerConfig(
            max_length=kw["max_length"],
            knowledge_max=kw["knowledge_max"],
            case=kw["case"],
            hints=kw["hints"],
        )
        options = TrainOptions(
            epochs=kw["epochs"],
            batch_size=kw["batch_size"],
            lr=kw["lr"],
            head_lr=kw["head_lr"],
            knowledge_dropout=0.0 if kw["no_knowledge"] else kw["knowledge_dropout"],
            knowledge_noise=0.0 if kw["no_knowledge"] else kw["knowledge_noise"],
            align=0.0 if kw["no_knowledge"] else kw["align"],
            select="without" if kw["no_knowledge"] else kw["select"],
            seed=kw["seed"],
            max_train_posts=kw["max_train_posts"],
        )
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    summary = train(
        train_posts,
        dev_posts,
        kw["out_dir"],
        kw["encoder"] or default_encoder_dir(),
        config,
        options,
        resume=kw["resume"],
        init_model=kw["init_model"],
    )
    if kw["as_json"]:
        click.echo(json.dumps(summary))
    else:
        for record in summary["history"]:
            click.echo(json.dumps(record))
        click.echo(f"best model: {summary['best_dir']} (selection {summary['best_selection']:.4f})")


def _table(result: dict[str, Any]) -> str:
    rows = [("overall", result), *result["per_type"].items()]
    lines = [f"{'type':<8} {'P':>7} {'R':>7} {'F1':>7} {'gold':>6} {'pred':>6}"]
    for name, r in rows:
        lines.append(
            f"{name:<8} {r['precision']:7.4f} {r['recall']:7.4f} {r['f1']:7.4f} "
            f"{r['n_gold']:6d} {r['n_pred']:6d}"
        )
    return "\n".join(lines)


@mner_group.command("eval")
@click.option(
    "--data",
    "data_file",
    required=True,
    type=_FILE,
    help="CoNLL file with gold BIO tags",
)
@click.option(
    "--knowledge",
    "knowledge_file",
    type=_FILE,
    help="sentence-aligned knowledge file (omit to score text-only)",
)
@click.option(
    "--model",
    "model_dir",
    type=_FOLDER,
    help="model folder (default: the MNER service's shipped model)",
)
@click.option("--batch-size", default=64, show_default=True)
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="last stdout line: one JSON object")
def eval_command(
    data_file: str,
    knowledge_file: str | None,
    model_dir: str | None,
    batch_size: int,
    threads: int | None,
    as_json: bool,
) -> None:
    """Entity-level precision, recall and F1 (overall and per type) of a model on a file."""
    _threads(threads)
    _quiet_transformers()
    folder = Path(model_dir) if model_dir else default_model_dir()
    try:
        posts = load_posts(data_file, knowledge_file)
        tagger, encoder = load_tagger(folder)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    if not posts:
        raise click.ClickException(f"{data_file} holds no posts")
    with_knowledge = knowledge_file is not None
    if with_knowledge and not any(p.knowledge for p in posts):
        raise click.ClickException(f"{knowledge_file} matched none of the posts of {data_file}")
    began = time.perf_counter()
    predicted = predict_spans(tagger, encoder, posts, with_knowledge, batch_size, progress=True)
    seconds = time.perf_counter() - began
    result = score_posts(posts, predicted)
    click.echo(_table(result))
    click.echo(
        f"{len(posts)} posts, knowledge {'on' if with_knowledge else 'off'}, "
        f"{len(posts) / seconds:.1f} posts/s, model {folder}"
    )
    if as_json:
        payload = {k: result[k] for k in ("precision", "recall", "f1", "n_gold", "n_pred")}
        payload["per_type"] = {
            kind: {k: r[k] for k in ("precision", "recall", "f1", "n_gold", "n_pred")}
            for kind, r in result["per_type"].items()
        }
        payload["posts_per_s"] = round(len(posts) / seconds, 1)
        click.echo(json.dumps(payload))


@mner_group.command("average")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@_out_dir_option("folder of the averaged model (fp16)")
def average_command(sources: tuple[str, ...], out_dir: str) -> None:
    """Average the weights of models fine-tuned from the same encoder (a "model soup").

    SOURCES are model folders (the first one gives the settings) or runs' last/state.pt."""
    _quiet_transformers()
    try:
        tagger, encoder = average_taggers(list(sources))
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(save_tagger(tagger, encoder.tokenizer, out_dir, fp16=True))


@mner_group.command("examples")
@click.option("--text", required=True, help="the post text")
@click.option("--caption", default="", help="the image description")
@click.option("-n", "count", default=5, show_default=True, help="how many examples")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    default=("twitter2017", "twitter2015"),
    show_default=True,
    help="annotated pools to draw from",
)
@click.option("--json", "as_json", is_flag=True)
def examples_command(
    text: str, caption: str, count: int, datasets: tuple[str, ...], as_json: bool
) -> None:
    """MSEA: the hand-annotated in-context examples most similar to a post."""
    _quiet_transformers()
    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="-n")
    try:
        selector = ExampleSelector.from_datasets(
            datasets, cache_dir=get_settings().models.cache_dir
        )
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    picked = selector.scored(text, caption or None, count)
    rows = [
        {
            "id": selector.examples[i].id,
            "similarity": round(score, 4),
            "text": selector.examples[i].text,
            "entities": selector.examples[i].entities,
        }
        for i, score in picked
    ]
    for row in rows:
        click.echo(f"{row['similarity']:.3f}  {row['id']}  {row['text']}")
    if as_json:
        click.echo(json.dumps(rows))


if __name__ == "__main__":
    mner_group()
