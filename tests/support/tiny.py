"""Tiny random-weight models of the production architectures (CLIP, OWLv2, OWL-ViT, Grounding
DINO, SAM), saved the way a real checkpoint folder is (``save_pretrained``), so tests and
benchmarks exercise the real loading and inference paths without downloading anything.

Their outputs are random: they are never a model anyone should serve.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import transformers as tf
from transformers import (
    AutoTokenizer,
    BertConfig,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SamProcessor,
    SwinConfig,
)

from riveg.serving.modelstore import MANIFEST


def _byte_vocab() -> dict[str, int]:
    """A character-level CLIP BPE vocabulary (every byte, with and without ``</w>``)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def clip_tokenizer():  # type: ignore[no-untyped-def]
    """A CLIP tokenizer with a byte-level vocabulary (no merges)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(_byte_vocab()))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def _manifest(folder: Path, backend: str) -> Path:
    (folder / MANIFEST).write_text(json.dumps({"backend": backend, "files": []}))
    return folder


def _text_config(vocab: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": vocab - 1,
    }


def _vision_config(image_size: int, patch: int) -> dict:
    return {
        "image_size": image_size,
        "patch_size": patch,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }


def save_tiny_clip(folder: Path) -> Path:
    """CLIPModel + CLIPProcessor (64 px images) for the ``clip`` VE backend."""
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=_text_config(len(tokenizer)),
        vision_config=_vision_config(64, 16),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return _manifest(folder, "clip")


def save_tiny_owl(folder: Path, v2: bool = True) -> Path:
    """OWLv2 (``v2``) or OWL-ViT detector + processor (64 px) for the ``owl`` VG backend."""
    tokenizer = clip_tokenizer()
    prefix = "Owlv2" if v2 else "OwlViT"
    config = getattr(tf, f"{prefix}Config")(
        text_config=_text_config(len(tokenizer)),
        vision_config=_vision_config(64, 16),
        projection_dim=32,  # OWL's class head compares projected text with hidden_size
    )
    getattr(tf, f"{prefix}ForObjectDetection")(config).eval().save_pretrained(folder)
    size = {"height": 64, "width": 64}
    extra = {} if v2 else {"crop_size": size, "do_center_crop": False}
    images = getattr(tf, f"{prefix}ImageProcessor")(size=size, **extra)
    getattr(tf, f"{prefix}Processor")(image_processor=images, tokenizer=tokenizer).save_pretrained(
        folder
    )
    return _manifest(folder, "owl")


def save_tiny_grounding_dino(folder: Path, bert_vocab: Path) -> Path:
    """Grounding DINO (tiny Swin backbone, 1-layer BERT text encoder over ``bert_vocab``'s
    vocabulary) + processor for the ``grounding-dino`` VG backend."""
    tokenizer = AutoTokenizer.from_pretrained(str(bert_vocab), local_files_only=True)
    backbone = SwinConfig(
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        image_size=64,
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # the box heads of layers > 0 are tied to layer 0's
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=20,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=64,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    GroundingDinoForObjectDetection(config).eval().save_pretrained(folder)
    images = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return _manifest(folder, "grounding-dino")


def save_tiny_sam(folder: Path) -> Path:
    """SamModel (64 px ViT encoder) + SamProcessor for the ``sam`` SEG backend."""
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "image_size": 64,
        "patch_size": 16,
        "output_channels": 16,
        "window_size": 2,
        "global_attn_indexes": [0],
        "mlp_dim": 37,
        "num_pos_feats": 8,  # positional features = 2 x 8 = the prompt encoder's width
    }
    prompt = {"hidden_size": 16, "image_size": 64, "patch_size": 16, "mask_input_channels": 4}
    decoder = {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "mlp_dim": 32,
        "iou_head_hidden_dim": 16,
    }
    config = SamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )
    SamModel(config).eval().save_pretrained(folder)
    images = SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size=None
    )
    SamProcessor(image_processor=images).save_pretrained(folder)
    return _manifest(folder, "sam")


def save_tiny_blip_itm(folder: Path, bert_vocab: Path) -> Path:
    """BLIP image-text matching (BlipForImageTextRetrieval, ITM head; 64 px, BERT vocabulary of
    ``bert_vocab``) + processor for the ``itm`` VE backend."""
    tokenizer = AutoTokenizer.from_pretrained(str(bert_vocab), local_files_only=True)
    text = {**_text_config(tokenizer.vocab_size), "encoder_hidden_size": 32}
    text["bos_token_id"] = tokenizer.cls_token_id
    text["eos_token_id"] = text["sep_token_id"] = tokenizer.sep_token_id
    text["pad_token_id"] = tokenizer.pad_token_id
    config = BlipConfig(text_config=text, vision_config=_vision_config(64, 16), projection_dim=16)
    BlipForImageTextRetrieval(config).eval().save_pretrained(folder)
    images = BlipImageProcessor(size={"height": 64, "width": 64})
    BlipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return _manifest(folder, "itm")
