"""Hyper-parameters as plain data: what a checkpoint stores to rebuild its module, loadable with `weights_only`.

Under LightningCLI a module's hyper-parameters already are the parsed config; a module built in Python is converted
here (`plain_hparams`), so `load_from_checkpoint` and `lightft export` rebuild either through Lightning's
allow-listed CLI instantiator.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, is_dataclass
from typing import Any

import lightning.pytorch as pl


def concrete(obj: Any) -> Any:
    """A real instance in place of a jsonargparse lazy default (the module was built in Python, not by the CLI)."""
    cls = getattr(obj, "_lazy_class_type", None)
    return cls(**obj.lazy_get_init_args()) if cls is not None else obj


def plain_hparams(module: pl.LightningModule) -> dict[str, Any]:
    """Hyper-parameters as plain data with `_class_path`, re-instantiable by `lightning.pytorch.cli.instantiate_module`.

    Under LightningCLI they already are (the parsed config); a module built in Python is converted here. Either way
    `SFTModule.load_from_checkpoint(path)` works, through Lightning's allow-listed CLI instantiator.
    """
    hparams = dict(module.hparams)
    if "_class_path" not in hparams:
        hparams = {"_class_path": _class_path(module), **{k: plain_data(v) for k, v in hparams.items()}}
        hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    return hparams


def _class_path(obj: Any) -> str:
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _init_parameters(cls: type) -> list[str]:
    """Named `__init__` parameters of `cls` and of the bases it forwards `**kwargs` to.

    Objects store them as attributes of the same name, as lightft's strategies do.
    """
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) and name not in names:
                names.append(name)
    return names


def plain_data(value: Any) -> Any:
    """`value` as plain data: numbers, strings, lists, dicts, and objects as `{class_path, init_args}`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return plain_data(asdict(value))
    if hasattr(value, "__dict__"):
        value = concrete(value)
        names = [n for n in _init_parameters(type(value)) if hasattr(value, n)]
        return {"class_path": _class_path(value), "init_args": {n: plain_data(getattr(value, n)) for n in names}}
    raise TypeError(f"cannot store hyper-parameter of type {type(value).__name__} in a checkpoint")
