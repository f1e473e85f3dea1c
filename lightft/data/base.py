"""TokenDataModule: what lightft's data modules share (SFT, preference and prompt data).

Splits (`train`, `val` or `val_fraction`, `test`, `predict`), the tokenizer linked from the model's `ModelSpec` (by
the CLI, from `model.init_args.model`), encoding once per node into the `datasets` cache (`prepare_data`) and
reading the cache on every rank (`setup`), the batch planner (`lightft.data.sampling`) and resumable loaders. A
subclass says how a split is encoded, which dataset (`lightft.data.datasets`) and collator
(`lightft.data.collate`) it becomes.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lightft.data.batch_report import BatchReport, report_batches
from lightft.data.batches import Batch
from lightft.data.mixture import Mixture
from lightft.data.sampling import PlannedBatchSampler, ResumableDataLoader
from lightft.data.sources import DatasetSpec
from lightft.errors import LightFTError
from lightft.models.loading import ModelSpec, load_tokenizer

KEY = "data.init_args"
Sources = DatasetSpec | str | list[DatasetSpec | str] | None  # one source, or a mixture
BatchSizeUnit = Literal["rows", "examples", "tokens"]
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def sources(value: Sources, key: str, seed: int) -> DatasetSpec | Mixture | None:
    """A split's configured data: None, one `DatasetSpec`, or a `Mixture` (a list, or one source with `examples`)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        specs = tuple(DatasetSpec(v) if isinstance(v, str) else v for v in value)
        return Mixture(specs, seed, key)
    spec = DatasetSpec(value) if isinstance(value, str) else value
    if spec.weight is not None:
        raise LightFTError(f"{key}.weight: a weight is a share of a mixture; give a list of sources, or drop it.")
    return Mixture((spec,), seed, key) if spec.examples is not None else spec


class TokenDataModule(pl.LightningDataModule):
    """What lightft's data modules share: splits, the linked tokenizer, caching, the batch planner, resumable loaders.

    A subclass says how a split is encoded (`encode`), what dataset and collator it becomes (`make_dataset`,
    `collator`), which batch type its training batches are (`batch_type`), and which splits it has; it takes its
    own arguments and forwards these with `**kwargs`.

    Args:
        train: Training data: a path or Hub name, or a full `DatasetSpec` (format, columns, split, ...), or a list
            of them, a mixture: each source with a `weight` (its share) or `examples` (a count per epoch); see
            `lightft.data.mixture`.
        val: Validation data (one source or a mixture). Alternatively set `val_fraction`.
        val_fraction: Hold out this fraction of `train` (seeded) for validation.
        test: Data for `lightft test`.
        tokenizer: Whose tokenizer to use; linked from `model.init_args.model` by the CLI.
        max_length: Longest sequence in tokens (per side for preference pairs; the pack size when packing).
        batch_size: Per micro-batch per device: examples, pairs (preference data) or prompts (rollouts); SFT counts
            it in its `batch_size_unit`.
        group_by_length: Batch examples of similar length together (less padding).
        num_workers: DataLoader worker processes.
        seed: Seed for shuffling, the validation split and a mixture's draws.
        num_proc: Processes that tokenize a split (`datasets.map`); None: this process. Encodings are cached by
            the data's content either way.
    """

    def __init__(
        self,
        *,
        train: Sources = None,
        val: Sources = None,
        val_fraction: float = 0.0,
        test: Sources = None,
        tokenizer: ModelSpec | None = None,
        max_length: int = 1024,
        batch_size: int = 4,
        group_by_length: bool = True,
        num_workers: int = 0,
        seed: int = 42,
        num_proc: int | None = None,
    ) -> None:
        super().__init__()
        specs = {"train": train, "val": val, "test": test}
        if not 0.0 <= val_fraction < 1.0:
            raise LightFTError(f"{KEY}.val_fraction: must be in [0, 1), got {val_fraction}.")
        if specs.get("val") is not None and val_fraction:
            raise LightFTError(f"{KEY}.val: give either a validation file or val_fraction, not both.")
        if batch_size < 1 or max_length < 2:
            raise LightFTError(f"{KEY}: batch_size must be >= 1 and max_length >= 2.")
        if num_proc is not None and num_proc < 1:
            raise LightFTError(f"{KEY}.num_proc: must be >= 1 (or null for this process), got {num_proc}.")
        self.num_proc = num_proc
        self.specs = {name: sources(spec, f"{KEY}.{name}", seed) for name, spec in specs.items()}
        self.val_fraction, self.tokenizer_spec = val_fraction, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.group_by_length, self.num_workers, self.seed = group_by_length, num_workers, seed
        self.packing = False
        self.batch_size_unit: BatchSizeUnit = "rows"  # what batch_size counts (SFTDataModule lets it be chosen)
        self._tokenizer: Any = None
        self._batches_logged = False
        self.datasets: dict[str, Dataset] = {}
        self.stats: dict[str, Any] = {}  # split -> what encoding kept, truncated and dropped (`SplitStats`)

    @property
    def rows_per_micro_batch(self) -> int:
        """The most rows of up to `max_length` tokens a full step's micro-batch holds (for memory estimates).

        `batch_size`, except with `batch_size_unit: tokens`: `batch_size // max_length` rows hold its budget.
        """
        if self.batch_size_unit == "tokens":
            return max(1, self.batch_size // self.max_length)
        return self.batch_size

    def encode(self, name: str, report: bool = True) -> Any:
        """The encoded rows of split `name` (cached by `datasets`)."""
        raise NotImplementedError

    def make_dataset(self, rows: Any) -> Dataset:
        """The dataset that the batch planner samples from."""
        raise NotImplementedError

    def batch_type(self) -> type[Batch]:
        """The class of the training batches (`lightft.data.batches`), what a module checks it can train on."""
        raise NotImplementedError

    def collator(self, name: str) -> Any:
        """The collate function of split `name`."""
        raise NotImplementedError

    def load_tokenizer(self) -> Any:
        """The model's tokenizer, with lightft's fix-ups: read (files or the Hub) on the first call, then kept."""
        if self._tokenizer is None:
            if self.tokenizer_spec is None:
                raise LightFTError(f"{KEY}.tokenizer: not set; name the model (model.init_args.model) or set it.")
            # the spec is linked from the model's, so errors name the key the user wrote
            self._tokenizer = load_tokenizer(self.tokenizer_spec, key="model.init_args.model.path")
        return self._tokenizer

    def prepare_data(self) -> None:
        """Tokenize every configured split once per node (fills the `datasets` cache)."""
        for name, spec in self.specs.items():
            if spec is not None:
                self.encode(name, report=False)

    def setup(self, stage: str) -> None:
        """Build the datasets the stage needs from the cache."""
        self._check_trainer()
        for name in STAGE_SPLITS[stage]:
            if name in self.datasets:
                continue
            if name == "val" and self.specs.get("val") is None and self.val_fraction:
                self._split_train()
            elif self.specs.get(name) is not None:
                self.datasets[name] = self.make_dataset(self.encode(name))
            elif name != "val":
                raise LightFTError(f"{KEY}.{name}: `{stage}` needs {name} data; set data.init_args.{name}.")

    def _split_train(self, report: bool = True) -> None:
        parts = self.encode("train", report=report).train_test_split(test_size=self.val_fraction, seed=self.seed)
        self.datasets["train"], self.datasets["val"] = (
            self.make_dataset(parts["train"]),
            self.make_dataset(parts["test"]),
        )

    def _check_trainer(self) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise LightFTError(
                "trainer.use_distributed_sampler: must be false; lightft's batch planner splits data across ranks."
            )

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        if name not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(name, name))
        dataset: Any = self.datasets[name]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        accumulate = trainer.accumulate_grad_batches if trainer and train else 1
        sampler = self._sampler(name, dataset, accumulate, world, rank, train)
        return self._dataloader(name, dataset, sampler, ResumableDataLoader if train else DataLoader)

    def _sampler(
        self, name: str, dataset: Any, accumulate: int, world: int, rank: int, train: bool
    ) -> PlannedBatchSampler:
        """The batch planner of split `name` on `rank` of `world`."""
        return PlannedBatchSampler(
            dataset.lengths,
            getattr(dataset, "trained", dataset.lengths),
            self.batch_size,
            accumulate=accumulate,
            world_size=world,
            rank=rank,
            shuffle=train,
            group_by_length=self.group_by_length or not train,
            seed=self.seed,
            **self._planning(name),
        )

    def _planning(self, name: str) -> dict[str, Any]:
        """What the planner does beyond cutting items into steps: token budgets (`unit`), packing by step."""
        return {}

    def _dataloader(self, name: str, dataset: Any, batches: Any, loader_class: type = DataLoader) -> DataLoader:
        """A loader of `batches` (lists of keys) with the split's collator and its own random generator.

        Starting an iterator draws its workers' base seed from the loader's generator; from the global stream it
        would shift dropout masks by whether a validation or an epoch started since the last checkpoint, so a
        resumed run would not match an uninterrupted one.
        """
        return loader_class(
            dataset,
            batch_sampler=batches,
            collate_fn=self.collator(name),
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, planned micro-batches for this rank; the first call logs what an optimizer step holds."""
        loader = self._loader("train", train=True)
        if not self._batches_logged:
            self._batches_logged = True
            report = self._batch_report(loader.batch_sampler, self.datasets["train"])
            if report is not None:
                rank_zero_info(report.line)
        return loader

    def batch_report(self, world_size: int = 1, accumulate: int = 1) -> BatchReport | None:
        """What each optimizer step of the training split holds on `world_size` ranks with `accumulate` (no Trainer).

        Encodes the training split quietly if no stage built it; None when there is no training data.
        """
        if "train" not in self.datasets:
            if self.specs.get("train") is None:
                return None
            if self.specs.get("val") is None and self.val_fraction:
                self._split_train(report=False)
            else:
                self.datasets["train"] = self.make_dataset(self.encode("train", report=False))
        dataset = self.datasets["train"]
        return self._batch_report(self._sampler("train", dataset, accumulate, world_size, 0, True), dataset)

    def _batch_report(self, sampler: PlannedBatchSampler, dataset: Any) -> BatchReport | None:
        """Examples per micro-batch and per optimizer step, optimizer steps per epoch, and packing's effect on them."""
        return report_batches(self, sampler, dataset)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (length-sorted); empty when no validation data is configured."""
        return self._loader("val") if self.specs.get("val") is not None or self.val_fraction else []

    def test_dataloader(self) -> DataLoader:
        """Test batches (length-sorted)."""
        return self._loader("test")

    def ordered_dataloader(self, name: str, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Every item of split `name` once, this rank's share (items rank, rank + world, ...), sorted by length.

        For one pass over the data outside training, e.g. computing DPO's reference log-probs once. All ranks get
        the same number of batches; padding batches repeat items, so keep only items with `index % world == rank`.
        """
        if name not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(name, name))
        dataset: Any = self.datasets[name]
        mine = sorted(range(rank, len(dataset), world_size), key=lambda i: -dataset.lengths[i])
        batches = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        # every rank runs as many batches (sharded models run collectives in each forward): the short ones repeat
        # their last batch, or item 0 when they have none; callers keep only the items of their own share
        per_rank = -(-len(range(0, len(dataset), world_size)) // self.batch_size)
        batches += [batches[-1] if batches else [0]] * (per_rank - len(batches))
        return self._dataloader(name, dataset, batches)
