"""Tiny Hugging Face model directories built offline: random weights, a word-level tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small model reads a short text about bits and bytes",
    "quantization maps weights to a grid of few values",
    "the dog sleeps while the fox runs into the forest",
]


def tokenizer(corpus=CORPUS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in corpus for w in line.split()})
    vocab = {"[UNK]": 0, "[EOS]": 1, "[PAD]": 2, "[MASK]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[PAD]", mask_token="[MASK]"
    )


def save_tiny(kind: str, directory: Path, seed: int = 0, hidden: int = 16) -> str:
    """kind: "gpt2" | "llama" | "bert"; vocab = the tokenizer's; returns the directory. `hidden`
    (the embedding width; MLPs are 2x or 4x it) 256 gives rows GGUF's k-quants take whole."""
    import torch
    import transformers as tf

    tok = tokenizer()
    vocab = len(tok)
    torch.manual_seed(seed)
    if kind == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=hidden, n_head=2, vocab_size=vocab, n_positions=64,
                                                 bos_token_id=1, eos_token_id=1))
    elif kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=vocab,
                                                   max_position_embeddings=64, tie_word_embeddings=True,
                                                   bos_token_id=1, eos_token_id=1, pad_token_id=2))
    elif kind == "bert":
        model = tf.BertForMaskedLM(tf.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=32, vocab_size=vocab, max_position_embeddings=64,
                                                 pad_token_id=2))
    else:
        raise ValueError(kind)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return str(directory)


def write_jsonl(path: Path, texts=CORPUS, repeat: int = 4) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for _ in range(repeat) for t in texts))
    return str(path)
