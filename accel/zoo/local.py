"""`accel.load`: a pretrained diffusers pipeline or transformers model from local files only.

accel never downloads. A model is found either in a local directory or in the Hugging Face cache
(`$HF_HOME/hub`, by default ~/.cache/huggingface/hub), where `hf download <id>` puts it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch


def load(path_or_id: str, *, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """Loads a diffusers pipeline (model_index.json), a single diffusers model (config.json with
    `_class_name`) or a transformers model (config.json with `architectures`), always with
    `local_files_only=True`. `cache_dir` and `revision` pick the cached snapshot; other keyword
    arguments go to `from_pretrained`.

    Raises FileNotFoundError, saying how to get the files, when they are not on this machine.
    """
    root = _resolve(path_or_id, kwargs.pop("cache_dir", None), kwargs.pop("revision", None))
    kwargs["local_files_only"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype  # diffusers >= 0.42 and transformers >= 5 both call it `dtype`
    try:
        if (root / "model_index.json").is_file():
            cls = _diffusers_class(_read_json(root / "model_index.json").get("_class_name"))
            return (cls or diffusers.DiffusionPipeline).from_pretrained(root, **_absent_components(root, kwargs))
        config = _read_json(root / "config.json")
        if "_class_name" in config:  # a diffusers model directory, e.g. a pipeline's transformer/
            cls = _diffusers_class(config["_class_name"])
            if cls is None:
                raise FileNotFoundError(_missing(path_or_id, f"{config['_class_name']} (config.json's _class_name) "
                                                 "is neither a diffusers class nor one of accel.models"))
            return cls.from_pretrained(root, **kwargs)
        if config.get("architectures"):
            return _load_transformers(root, config["architectures"][0], kwargs)
    except OSError as err:  # from_pretrained's "file not found" family (weights or sub-folders missing)
        raise FileNotFoundError(_missing(path_or_id, f"loading failed: {err}")) from err
    raise FileNotFoundError(
        _missing(path_or_id, f"{root} has neither model_index.json nor a config.json naming a model class")
    )


def _diffusers_class(name: Any) -> Any:
    """The class a saved pipeline or model names: diffusers' own, or one of accel's native backbones and
    their pipelines (`accel.models`: DiCoModel, LEGOPipeline...), which diffusers cannot look up by name."""
    if not isinstance(name, str):
        return None
    found = getattr(diffusers, name, None)
    if found is None:
        from accel import models

        found = getattr(models, name, None) if name in models.__all__ else None
    return found


def _absent_components(root: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Passes None for the components saved as absent ([null, null] in model_index.json, e.g. the text
    encoders of a zoo pipeline): diffusers would otherwise refuse to build most pipelines without them."""
    index = _read_json(root / "model_index.json")
    absent = {
        name: None
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and value[:2] == [None, None]
        and name not in kwargs
    }
    return {**absent, **kwargs}


def _load_transformers(root: Path, architecture: str, kwargs: dict[str, Any]) -> Any:
    """The class the config names when transformers has it, else the Auto class for the config."""
    import transformers  # imported only when needed: it is slow to import

    cls = getattr(transformers, architecture, None) or transformers.AutoModel
    return cls.from_pretrained(root, **kwargs)


def _resolve(path_or_id: str, cache_dir: str | None, revision: str | None) -> Path:
    """A local directory as is; a hub id to its snapshot in the local cache, never over the network."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(
            f"{path_or_id!r} is a file; pass a model directory or a Hugging Face model id."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(path_or_id, cache_dir=cache_dir, revision=revision, local_files_only=True)
        )
    except Exception as err:  # LocalEntryNotFoundError, HFValidationError (not an id), ...
        raise FileNotFoundError(_missing(path_or_id, "it is not a local directory nor in the cache")) from err


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _missing(path_or_id: str, why: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (
        f"Cannot load {path_or_id!r} from local files: {why}. accel never downloads. "
        f"On a machine with network access, run `hf download {path_or_id}` to put it in the Hugging Face "
        f"cache (here {HF_HUB_CACHE}; the HF_HOME environment variable moves it, e.g. to a shared disk), "
        "or pass the path of a local directory holding model_index.json (a diffusers pipeline) or "
        "config.json (a model)."
    )
