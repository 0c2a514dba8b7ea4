"""Tiny Hugging Face models saved from config objects (never a download) and a token classification dataset.

Imported by name (``hub_models:tokens``) by the command-line tests; pytest puts this folder on ``sys.path``.
"""

from __future__ import annotations

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
