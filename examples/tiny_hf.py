"""Tiny Hugging Face classifiers saved from config objects (never a download), and token sequences to classify.

    python examples/tiny_hf.py gpt2-tiny            # or: ... llama-tiny LlamaForSequenceClassification
    prunescope train --model hf:gpt2-tiny --data tiny_hf:tokens --optimizer adamw --lr 0.01 --out runs/gpt2

(run from ``examples/``, or with it on ``PYTHONPATH``, so that ``tiny_hf:tokens`` imports). Needs the
``hf`` extra: ``pip install 'prunescope[hf]'``. The tests build their models with the same functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

VOCAB = 32
SEQ_LEN = 8


def tokens(n_train: int = 240, n_val: int = 90, n_test: int = 90, num_classes: int = 3, seed: int = 0) -> dict:
    """Token sequences (N, 8) over a vocabulary of 32 (0 is padding, never used), labels in 0..2.

    Each class owns a band of 10 tokens; half the tokens of a sequence come from its class's band,
    the rest from the whole vocabulary, so that the class is learnable from the tokens alone.
    """
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        noise = torch.randint(1, VOCAB, (n, SEQ_LEN), generator=generator)
        band = 1 + y[:, None] * 10 + torch.randint(0, 10, (n, SEQ_LEN), generator=generator)
        own = torch.rand(n, SEQ_LEN, generator=generator) < 0.5
        return torch.where(own, band, noise), y

    return {"train": split(n_train), "val": split(n_val), "test": split(n_test), "num_classes": num_classes,
            "name": "tokens"}


def gpt2_config(**overrides):
    from transformers import GPT2Config

    settings = {"n_layer": 2, "n_embd": 16, "n_head": 2, "vocab_size": VOCAB, "n_positions": SEQ_LEN,
                "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, "num_labels": 3, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0} | overrides
    return GPT2Config(**settings)


def llama_config(**overrides):
    from transformers import LlamaConfig

    settings = {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2,
                "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": SEQ_LEN, "pad_token_id": 0,
                "bos_token_id": 0, "eos_token_id": 0, "num_labels": 3} | overrides
    return LlamaConfig(**settings)


def save(model_class: str, config, directory: Path, *, seed: int = 0) -> Path:
    """A freshly initialised ``transformers.<model_class>(config)``, saved with ``save_pretrained`` in ``directory``."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" would land in the tests' stderr
    torch.manual_seed(seed)
    getattr(transformers, model_class)(config).save_pretrained(directory)
    return directory


if __name__ == "__main__":
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "gpt2-tiny")
    architecture = sys.argv[2] if len(sys.argv) > 2 else "GPT2ForSequenceClassification"
    config = llama_config() if architecture.startswith("Llama") else gpt2_config()
    print(f"wrote {save(architecture, config, directory)}")
