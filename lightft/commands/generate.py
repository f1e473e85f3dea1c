"""`lightft generate`: a quick look at what a model learned.

Loads a base model (hub id, directory, `package://`, GGUF), a base plus a peft adapter, or a `lightft export`
directory; applies the chat template; decodes greedily or samples. Prompts come from `--prompt` or from a dataset
file in any supported format (`--prompts_file`); when the file has reference answers, the exact-match rate is
printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel

from lightft.checkpoints import run_checkpoint
from lightft.data.collate import PromptCollator
from lightft.data.formats import Example
from lightft.data.pipeline import encode_prompts
from lightft.data.sources import DatasetSpec
from lightft.data.templates import ExampleEncoder
from lightft.errors import LightFTError
from lightft.generation import GenerationSettings
from lightft.generation import generate as generate_batch
from lightft.models.loading import ModelSpec, load_model, load_tokenizer, resolve_device
from lightft.quantization import ptq

from .export import METADATA, load_exported, load_trained


def load_inference_model(
    model: str,
    gguf_file: str | None,
    adapter: str | None,
    device: torch.device,
    dtype: torch.dtype,
    key: str = "--model",
) -> tuple[Any, Any]:
    """A model and its tokenizer, in eval mode on `device`, from any of: a training checkpoint (`*.ckpt`, a file or a
    sharded checkpoint directory), a `lightft export` or `lightft quantize` directory, a hub id / directory /
    `package://NAME` (GGUF with `gguf_file`), optionally with a peft `adapter` on top.
    """  # noqa: D205
    if model.endswith(".ckpt"):  # a file, or the directory of a sharded (FSDP2, DeepSpeed) checkpoint
        if not Path(model).exists():
            raise LightFTError(f"{key}: checkpoint '{model}' not found.")
        module = load_trained(model, device=device)
        if all(p.is_floating_point() for p in module.model.parameters()):  # a QLoRA base keeps its 4-bit weights
            module.model.to(dtype)
        return module.model.eval(), module.tokenizer
    if model.endswith(".gguf") and Path(model).is_file():  # a GGUF file named directly
        model, gguf_file = str(Path(model).parent), Path(model).name
    if ptq.scheme_of(model) is not None:  # a `lightft quantize` output
        return ptq.load_quantized(model, device), load_tokenizer(ModelSpec(model), key=key)
    if (Path(model) / METADATA).is_file():
        return load_exported(model, dtype, device)
    spec = ModelSpec(model, gguf_file=gguf_file, dtype=str(dtype).removeprefix("torch."))  # type: ignore[arg-type]
    tokenizer = load_tokenizer(spec, key=key)
    network = load_model(spec, tokenizer, key=key).to(device)
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise LightFTError(f"--adapter: '{adapter}' is not a peft adapter directory (no adapter_config.json).")
        network = PeftModel.from_pretrained(network, adapter).to(device)
    return network.eval(), tokenizer


def _prompts(
    tokenizer: Any, prompt: str | None, prompts_file: str | None, system: str | None, limit: int
) -> list[dict]:
    if prompts_file:
        rows = encode_prompts(DatasetSpec(prompts_file), "--prompts_file", tokenizer, max_length=4096)
        return [rows[i] for i in range(min(limit, len(rows)))]
    if not prompt:
        raise LightFTError("give --prompt TEXT or --prompts_file FILE (a dataset file in any lightft format).")
    encoder = ExampleEncoder(tokenizer, max_length=4096)
    items = []
    for text in [prompt]:
        if tokenizer.chat_template:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            example = Example(messages)
        else:
            example = Example(segments=[(text, False)])
        items.append({"prompt_ids": encoder.encode_prompt(example), "reference": ""})
    return items


def generate(
    model: str,
    prompt: str | None = None,
    prompts_file: str | None = None,
    adapter: str | None = None,
    gguf_file: str | None = None,
    system: str | None = None,
    run: str | None = None,
    limit: int = 20,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    output: str | None = None,
    device: str = "auto",
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
) -> None:
    """Generate completions for prompts with a base model, base + adapter, or an exported model.

    Args:
        model: Hub id, local directory, `package://NAME`, a `lightft export` or `lightft quantize` directory, or a
            training checkpoint (`runs/<run>/checkpoints/last.ckpt`; or `best` / `last` with `--run`).
        prompt: A user message to answer (for several, use `prompts_file`).
        prompts_file: A dataset file (any lightft format); its trained turns are used as references.
        adapter: A peft adapter directory to apply to `model`.
        gguf_file: GGUF file inside `model`.
        system: System message for `--prompt` prompts.
        run: A run directory (its trainer.default_root_dir): `--model best` / `--model last` then read its best.ckpt
            (the best validation, `best.monitor`) or last.ckpt.
        limit: At most this many prompts from `prompts_file`.
        batch_size: Prompts generated together.
        max_new_tokens: Longest completion.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        seed: Random seed for sampling.
        output: Also write `{prompt, completion, reference}` JSON lines here.
        device: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.
        dtype: Weight and compute dtype; `auto` is bfloat16 on CUDA and float32 on CPU.
    """
    model = run_checkpoint(model, run, "--model")
    torch.manual_seed(seed)
    target, weights = resolve_device(device, dtype)
    network, tokenizer = load_inference_model(model, gguf_file, adapter, target, weights)
    print(f"loaded {model} on {target}, {str(weights).removeprefix('torch.')}", flush=True)
    items = [{**item, "index": i} for i, item in enumerate(_prompts(tokenizer, prompt, prompts_file, system, limit))]
    settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p)
    collate = PromptCollator(tokenizer.pad_token_id)
    rows = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size]).to(target)
        texts = generate_batch(network, tokenizer, batch.input_ids, batch.attention_mask, settings)
        for item, text in zip(items[start : start + batch_size], texts, strict=True):
            prompt_text = tokenizer.decode(item["prompt_ids"], skip_special_tokens=False)
            rows.append({"prompt": prompt_text, "completion": text.strip(), "reference": item["reference"]})
            print(f"--- prompt {item['index']}\n{prompt_text.strip()}\n--- completion\n{text.strip()}\n", flush=True)
    _summary(rows, output)


def _summary(rows: list[dict], output: str | None) -> None:
    references = [r for r in rows if r["reference"]]
    if references:
        hits = sum(r["completion"] == r["reference"].strip() for r in references)
        print(f"exact match with reference: {hits}/{len(references)}")
    if output:
        with open(output, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
