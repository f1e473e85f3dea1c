"""Lightft's commands, their one-line descriptions (`lightft --help`) and the dispatch of the non-Lightning ones.

LightningCLI's `fit`, `validate`, `test` and `predict` live in `lightft.commands.fit`; `estimate`, `bench`, `doctor`,
`export`, `quantize`, `generate`, `chat`, `eval` and `pipeline` in their own modules.

`export`, `quantize`, `generate`, `chat` and `eval` are typed by jsonargparse from their signatures; `estimate`,
`bench` and `doctor` add their own typed options to `lightft fit`'s parser (`lightft.commands.fit.ParseOnlyCLI`) and
read the same configs.
Nothing here imports `lightft.cli`: the console script imports the commands, never the other way round.
"""

from __future__ import annotations

FIT_COMMANDS = {  # LightningCLI's subcommands
    "fit": "Fine-tune: train a model from a config into a run directory (trainer.default_root_dir).",
    "validate": "Evaluate a model or a checkpoint (--ckpt_path) on the validation split.",
    "test": "Evaluate a model or a checkpoint (--ckpt_path) on the test split (data.init_args.test).",
    "predict": "Generate completions for the predict split into <run directory>/predictions/.",
}
EXTRA_COMMANDS = {
    "estimate": "Peak memory per rank from the config alone, before launch (no weights loaded).",
    "bench": "A matrix of short training runs: measured memory, speed and MFU beside the estimate.",
    "doctor": "A dry run: tokenizer, data, batches, compatibility and memory checks before training.",
    "export": "A training checkpoint -> a Hugging Face adapter or merged model, verified by reloading it.",
    "quantize": "Post-training quantization (torchao, bitsandbytes) of a trained model, with a size/quality report.",
    "generate": "Generate from a base model, an adapter or an export: a quick look at what a model learned.",
    "chat": "Talk to a model (base, adapter, export, checkpoint, GGUF) in the terminal: streamed, multi-turn.",
    "eval": "A model on held-out data: exact match, ROUGE-L, BLEU, chrF, JSON fields, loss, rewards, KL; --compare.",
    "pipeline": "Stages SFT -> reward model -> PPO / DPO / ORPO -> eval -> new pairs, from one config; resumable.",
}
COMMANDS = {**FIT_COMMANDS, **EXTRA_COMMANDS}


def usage() -> str:
    """`lightft --help`: every command with its one-line description."""
    width = max(map(len, COMMANDS))
    lines = ["usage: lightft <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += [
        "",
        "`lightft <command> --help` lists a command's options. fit, validate, test, predict, estimate, bench and",
        "doctor read the same configs: --config configs/<method>/<recipe>.yaml [--config overlay.yaml ...] plus",
        "--model..., --data... and --trainer... keys.",
    ]
    return "\n".join(lines)


def run_command(name: str, args: list[str]) -> None:
    """Run one of `EXTRA_COMMANDS` on its arguments (`args`, the words after the command's name)."""
    if name in ("estimate", "bench", "doctor"):  # `lightft fit`'s parser plus their own options
        from lightft.commands import bench, doctor, estimate

        return {"estimate": estimate, "bench": bench, "doctor": doctor}[name].main(args)
    from jsonargparse import auto_cli

    if name == "export":
        from lightft.commands.export import export as function
    elif name == "quantize":
        from lightft.commands.quantize import quantize as function
    elif name == "eval":
        from lightft.commands.eval import evaluate as function
    elif name == "chat":
        from lightft.commands.chat import chat as function
    elif name == "pipeline":
        from lightft.commands.pipeline import main

        return main(args)
    else:
        from lightft.commands.generate import generate as function
    auto_cli(function, args=args, as_positional=False, exit_on_error=False)  # errors: one line (lightft.cli)
