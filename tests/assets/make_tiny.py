"""Build the tiny Llama-style config and tokenizer in tests/assets/tiny-llama (no weights: `random_init: true`).

The tokenizer is a 512-token byte-level BPE trained on the quickstart data, with ChatML special tokens and a chat
template; like SmolLM2 its pad token starts out equal to EOS, so tests exercise lightft's pad fix-up.

    python tests/assets/make_tiny.py
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

HERE = Path(__file__).parent
OUT = HERE / "tiny-llama"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus() -> list[str]:
    """Text the BPE merges are learned from."""
    lines = []
    for row in map(json.loads, (HERE.parent.parent / "data/quickstart/train.jsonl").read_text().splitlines()):
        lines += [m["content"] for m in row["messages"]]
    return lines + ["The quick brown fox jumps over the lazy dog. 0123456789 user assistant system"] * 10


def main() -> None:
    """Write config.json and the tokenizer files."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        chat_template=CHATML,
    )
    fast.save_pretrained(OUT)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    config.save_pretrained(OUT)


if __name__ == "__main__":
    main()
