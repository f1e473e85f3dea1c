"""What a training module receives: one frozen dataclass per kind of batch, built by the collators.

Every batch says what it holds by its type, not by which dictionary keys happen to be present, and carries the
optimizer step's normaliser (`normaliser`: trained tokens, or examples, of the whole step on all ranks, counted by
the batch planner) so that `LightFTModule.scaled` turns a summed loss into exact one-big-batch gradients.

Batches move to a device with `.to` and are pinned with `.pin_memory` (Lightning and the DataLoader call these on
any object that has them), tensors and `None` alike; lists of Python values stay on the host. Their dtypes are the
collators' choice: Lightning's precision plugins (DeepSpeed and FSDP always, `*-true` precision) cast the floating
tensors of every input, which would round the step's normaliser in bf16 (1234 -> 1232) and which a frozen dataclass
refuses (Lightning issue #21577); a batch comes out of that cast unchanged (`Batch.__deepcopy__`).
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import FrozenInstanceError, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


@dataclass(frozen=True, kw_only=True, eq=False)
class Batch:
    """Base of the batch types: device moves and a plain-data view (for dumps and logs).

    Frozen, and compared by identity (`eq=False`: a tensor comparison has no single truth value). `what` says in
    words what a batch type holds (for messages such as "DPOModule trains on chosen/rejected pairs").
    """

    what: ClassVar[str] = "batches"

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> Self:
        """The batch with every tensor on `device`.

        Copies to an accelerator are non-blocking unless `non_blocking=False` (as Lightning moves bare tensors);
        copies to the host block, so the values are there when this returns.
        """
        if non_blocking is None:
            non_blocking = torch.device(device).type not in ("cpu", "mps")
        moved = {
            f.name: value.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> Self:
        """The batch with every tensor in pinned host memory (DataLoader's `pin_memory=True`)."""
        pinned = {f.name: v.pin_memory() for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return replace(self, **pinned)

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        """A deep copy; but the copy through which Lightning casts an input's floating tensors keeps this batch's data.

        Lightning's `apply_to_collection` rebuilds a dataclass by deep-copying it with every field's value memoised as
        itself, then assigning each field its converted value. That copy (recognised by those memo entries) ignores
        one assignment per field and is then an ordinary frozen batch again, holding this batch's values.
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if all(id(v) in memo and memo[id(v)] is v for v in values.values()):
            copy = replace(self)
            object.__setattr__(copy, "__class__", _rebuilding(type(self)))
            copy.__dict__["_pending"] = set(values)
            return copy
        return replace(self, **{name: deepcopy(value, memo) for name, value in values.items()})

    def plain(self) -> dict[str, Any]:
        """Every field as plain Python data (lists, numbers), `None` fields left out."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.tolist() if isinstance(value, Tensor) else value
        return out

    @property
    def size(self) -> int:
        """Examples in the batch (what metrics are averaged over)."""
        raise NotImplementedError

    def real_tokens(self) -> int:
        """Non-pad tokens in the batch (throughput)."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenBatch(Batch):
    """Rows of token ids with next-token labels (SFT; the base of the preference batches).

    Args:
        input_ids: (R, T) token ids, right-padded.
        labels: (R, T) the trained token ids, `IGNORE_INDEX` elsewhere.
        attention_mask: (R, T) 1 on real tokens; None for packed rows.
        position_ids: (R, T) positions restarting at every packed document; None for unpacked rows.
        n_tokens: Real (non-pad) tokens of a packed batch, which has no attention mask to count them from.
        normaliser: Trained tokens (SFT) or examples (pairs, unpaired rows) of the whole optimizer step, all
            micro-batches on all ranks; None outside planned training batches.
        rows: The dataset rows in each batch row (a packed row holds several), for diagnostics.
        weights: (R, T) float32 loss weight of each token (per-message `weight` in the data); None: all 1.
    """

    what: ClassVar[str] = "token ids with labels"
    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor | None = None
    position_ids: Tensor | None = None
    n_tokens: Tensor | None = None
    normaliser: Tensor | None = None
    rows: list[list[int]] | None = None
    weights: Tensor | None = None

    @property
    def size(self) -> int:
        """Rows in the batch."""
        return len(self.input_ids)

    @property
    def packed(self) -> bool:
        """Whether documents are packed into rows (positions restart per document)."""
        return self.position_ids is not None

    def real_tokens(self) -> int:
        """Non-pad tokens (packed rows count their documents, not the padding)."""
        if self.attention_mask is not None:
            return int(self.attention_mask.sum())
        if self.n_tokens is not None:
            return int(self.n_tokens)
        return int(self.input_ids.numel())


@dataclass(frozen=True, kw_only=True, eq=False)
class PairBatch(TokenBatch):
    """B preference pairs as 2B rows: chosen (rows 0..B-1) then rejected, for one forward pass.

    Args:
        index: (B,) dataset row of each pair (precomputed reference log-probs are looked up by it).
        margin: (B,) required reward margin per pair (reward models), when the data has one.
    """

    what: ClassVar[str] = "chosen/rejected pairs"
    index: Tensor
    margin: Tensor | None = None

    @property
    def size(self) -> int:
        """Pairs in the batch."""
        return len(self.index)


@dataclass(frozen=True, kw_only=True, eq=False)
class UnpairedBatch(TokenBatch):
    """B unpaired (KTO) examples as 2B rows: the examples, then B mismatched prompt/completion rows (KL estimate).

    Args:
        index: (B,) dataset row of each example.
        desirable: (B,) whether each example's completion is desirable.
    """

    what: ClassVar[str] = "unpaired prompt/completion/label rows"
    index: Tensor
    desirable: Tensor

    @property
    def size(self) -> int:
        """Examples in the batch."""
        return len(self.index)


@dataclass(frozen=True, kw_only=True, eq=False)
class PromptBatch(Batch):
    """Left-padded prompts (generation, rollouts).

    Args:
        input_ids: (B, P) prompt token ids, left-padded so every row ends where generation starts.
        attention_mask: (B, P) 1 on real tokens.
        index: (B,) dataset row of each prompt.
        references: Each prompt's reference answer ("" when the data has none).
    """

    what: ClassVar[str] = "prompts"
    input_ids: Tensor
    attention_mask: Tensor
    index: Tensor
    references: list[str]

    @property
    def size(self) -> int:
        """Prompts in the batch."""
        return len(self.input_ids)

    def real_tokens(self) -> int:
        """Non-pad prompt tokens."""
        return int(self.attention_mask.sum())


class _Rebuilding:
    """The class of a batch's copy while Lightning assigns its fields (see `Batch.__deepcopy__`).

    Each field's first assignment is ignored (the batch keeps its own value); once every field has had one, the copy
    turns back into an instance of its frozen batch class. Any other assignment raises as on a frozen batch.
    """

    _frozen: type[Batch]

    def __setattr__(self, name: str, value: Any) -> None:
        pending = self.__dict__["_pending"]
        if name not in pending:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        pending.remove(name)
        if not pending:
            del self.__dict__["_pending"]
            object.__setattr__(self, "__class__", self._frozen)


_REBUILDING: dict[type, type] = {}


def _rebuilding(cls: type[Batch]) -> type:
    """The `_Rebuilding` twin of batch class `cls` (made once per class)."""
    if cls not in _REBUILDING:
        _REBUILDING[cls] = type(f"_Rebuilding{cls.__name__}", (_Rebuilding, cls), {"_frozen": cls})
    return _REBUILDING[cls]
