"""`lightft doctor`: the real checks on the repo's configs, and each problem it exists to find."""

from __future__ import annotations

from types import SimpleNamespace

import datasets

from lightft.cli import main
from lightft.commands.doctor import Report, data_checks, tokenizer_checks
from lightft.data.pipeline import SplitStats
from tests.conftest import ROOT, chat, write_jsonl

TINY = str(ROOT / "configs" / "debug" / "tiny.yaml")


def doctor(capsys, *args: str) -> tuple[int, str]:
    with _NoExit() as exit_info:
        main(["doctor", "--config", TINY, *args])
    return exit_info.code, capsys.readouterr().out


class _NoExit:
    """Captures `sys.exit` (or its absence: code 0)."""

    code = 0

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is SystemExit:
            self.code = value.code
            return True
        return False


def test_a_healthy_config_passes_and_shows_what_trains(capsys):
    code, out = doctor(capsys, "--examples", "1")
    assert code == 0, out
    assert "lightft doctor: 0 error(s), 0 warning(s)" in out
    assert "64/64 examples kept" in out and "EOS '<|im_end|>' is trained in every complete example" in out
    assert '[[{"customer": "Mei"' in out  # the assistant turn is marked as trained, the prompt is not
    assert "[[<|im_start|>user" not in out
    assert "| **total** |" in out  # the memory estimate


def test_truncation_and_untrainable_examples_are_warnings(tmp_path, capsys):
    rows = [chat("hi", "hello there " * 40), chat("hi", "ok"), {"messages": [{"role": "user", "content": "no answer"}]}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code, out = doctor(capsys, "--data.init_args.train.path", str(data), "--data.init_args.val", "null",
                       "--data.init_args.val_fraction", "0", "--data.init_args.max_length", "48")  # fmt: skip
    assert code == 0, out
    assert "1 example(s) train on zero tokens" in out and "1 example(s) truncated" in out
    assert "0 error(s), 2 warning(s)" in out


def test_an_incompatible_config_is_an_error(capsys):
    code, out = doctor(
        capsys, "--model.init_args.peft", "lightft.peft.PromptTuning", "--data.init_args.packing", "true"
    )
    assert code == 1
    assert "error: data.init_args.packing: PromptTuning prepends virtual tokens" in out


def fake_data(rows: dict, max_length: int = 64):
    table = datasets.Dataset.from_dict(rows)
    return SimpleNamespace(
        specs={"train": SimpleNamespace(path="fake.jsonl")},
        encode=lambda name, report=False: table,
        stats={"train": SplitStats(rows=len(table), kept=len(table), truncated=0, too_long=0, zero_trained=0)},
        max_length=max_length,
    )


def test_a_doubled_bos_and_a_missing_eos_are_errors():
    bos, eos = 1, 2
    tok = SimpleNamespace(bos_token_id=bos, eos_token_id=eos, eos_token="</s>")
    ok = {"input_ids": [[bos, 5, 6, eos]], "labels": [[-100, -100, 6, eos]]}
    report = Report()
    data_checks(report, fake_data(ok), tok)
    assert report.errors == []
    bad = {
        "input_ids": [[bos, bos, 5, 6, eos], [bos, 5, 6, 7]],
        "labels": [[-100, -100, -100, 6, eos], [-100, -100, 6, 7]],
    }
    report = Report()
    data_checks(report, fake_data(bad), tok)
    assert len(report.errors) == 2
    assert report.errors[0].startswith("tokenizer: 1 example(s) start with two BOS tokens")
    assert report.errors[1].startswith("data: 1 of 2 complete example(s) never train on EOS")
    truncated = {"input_ids": [[bos, 5, 6, 7]], "labels": [[-100, 5, 6, 7]]}  # max_length reached: EOS may be cut
    report = Report()
    data_checks(report, fake_data(truncated, max_length=4), tok)
    assert report.errors == []


def test_pad_equal_to_eos_is_an_error():
    report = Report()
    tokenizer_checks(report, SimpleNamespace(pad_token_id=2, eos_token_id=2, pad_token="</s>", eos_token="</s>",
                                             chat_template=None))  # fmt: skip
    assert report.errors[0].startswith("tokenizer: the pad token is EOS (id 2)")
    assert report.warnings[0].startswith("tokenizer: no chat template")


def test_batches_show_the_steps_an_epoch_takes_and_warn_when_packing_cuts_them(capsys):
    packed = ["--data.init_args.packing", "true", "--data.init_args.max_length", "512",
              "--trainer.accumulate_grad_batches", "2", "--examples", "0"]  # fmt: skip
    code, out = doctor(capsys, *packed)
    assert code == 0, out
    # 64 examples of ~100 tokens: ~5 per packed row, so 8 rows per step take 2 steps where 4 examples take 8
    assert "info    batches: 4 packed rows of up to 512 tokens per micro-batch x 2 accumulation x 1 rank = " in out
    assert "2 optimizer steps per epoch (unpacked with batch_size 4: 8 steps); set batch_size_unit: examples" in out
    assert "0 error(s), 1 warning(s)" in out
    assert "warning data.init_args.batch_size_unit: rows with packing: batch_size 4 counts packed rows" in out
    code, out = doctor(capsys, *packed, "--data.init_args.batch_size_unit", "examples")
    assert code == 0 and "0 error(s), 0 warning(s)" in out, out
    assert "info    batches: 4 examples (1 packed row of up to 512 tokens) per micro-batch x 2 accumulation x 1 " in out
    assert "= 8 examples (~311 trained tokens) per optimizer step, 8 optimizer steps per epoch (the unpacked" in out


def test_a_meaningless_batch_size_unit_is_a_config_error(capsys):
    with _NoExit() as exit_info:
        main(["doctor", "--config", TINY, "--data.init_args.batch_size_unit", "tokens"])
    assert exit_info.code == 2
    assert (
        "data.init_args.batch_size_unit: tokens makes batch_size the tokens per micro-batch" in capsys.readouterr().err
    )


def test_doctor_checks_the_monitored_metrics_as_fit_does(capsys):
    code, out = doctor(capsys, "--early_stopping.monitor", "val/loss", "--best.monitor", "val/ppl")
    assert code == 0, out
    assert "ok      monitored by validation: --early_stopping.monitor val/loss, --best.monitor val/ppl" in out
    code, out = doctor(capsys, "--early_stopping.monitor", "val/acc")
    assert code == 1
    assert "error: --early_stopping.monitor: SFTModule's validation does not log 'val/acc'; it logs val/loss" in out
    code, out = doctor(capsys, "--best.monitor", "val/loss", "--trainer.limit_val_batches", "0")
    assert code == 1
    assert "error: --best.monitor: 'val/loss' is a validation metric, but validation is off" in out
