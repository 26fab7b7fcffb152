"""User data of the ``hf-*`` task kinds: any local file, saved dataset or cached Hub dataset.

``task.data`` is one of

* a file: ``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet`` or ``.txt`` (one row a line, column
  ``text``), read with ``datasets.load_dataset("csv"/"json"/"parquet"/"text", data_files=...)``;
* a folder written by ``datasets.Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (read with
  ``datasets.load_from_disk``), or a folder of data files such as ``train.csv`` + ``test.csv``;
* a Hub dataset id (``org/name``, ``org/name:config``) already in the local Hugging Face cache:
  prepared by an earlier ``datasets.load_dataset(id)`` (``HF_DATASETS_CACHE``) or downloaded with
  ``hf download --repo-type dataset id`` (``HF_HUB_CACHE``); nothing is fetched from the network;
* a mapping ``{train: file, validation: file, test: file}`` (``val`` is an alias of ``validation``).

``task.columns`` maps the kind's roles (``text``, ``label``, ``prompt``, ...) to the data's column
names. A source without splits is split with :func:`~loradyn.tasks.data.split_examples` and
``split_seed``; a validation or test split the source lacks is carved from train the same way.
Every problem is one :class:`~loradyn.errors.LoradynError` line, raised before any training.
``datasets`` is imported lazily: loradyn imports without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LoradynError
from .data import split_examples

__all__ = ["Splits", "datasets_cache", "describe", "encode_labels", "hf_home", "hub_cache", "hub_snapshot", "load_splits"]

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
_SPLIT_KEYS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
_DICT_SPLITS = {"train": "train", "validation": "val", "val": "val", "valid": "val", "dev": "val", "test": "test"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_PARTS = ("train", "val", "test")
_FIX = {"train": "give more training rows or lower task.n_val / task.n_test",
        "val": "set task.n_val > 0 or give a validation file with rows",
        "test": "set task.n_test > 0 or give a test file with rows"}


@dataclass(frozen=True)
class Splits:
    """Train / validation / test rows of a user dataset.

    Attributes:
        train, val, test: rows, each a dict role -> value (``{"text": ..., "label": ...}``).
        columns: the column names of the source (of its train part).
        source: one line saying where the rows came from and how they were split.
        roles: role -> the source column it was read from.
        label_names: the class names when the label column is a ``datasets.ClassLabel``, else None.
    """

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    columns: tuple[str, ...]
    source: str
    roles: dict[str, str] = field(default_factory=dict)
    label_names: tuple[str, ...] | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """``{"train": n, "val": n, "test": n}``."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface`` (read now)."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface"


def hub_cache() -> Path:
    """The Hub file cache: ``$HF_HUB_CACHE`` (or ``$HUGGINGFACE_HUB_CACHE``), else ``HF_HOME/hub``."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(env).expanduser() if env else hf_home() / "hub"


def datasets_cache() -> Path:
    """The prepared-datasets cache: ``$HF_DATASETS_CACHE``, else ``HF_HOME/datasets``."""
    env = os.environ.get("HF_DATASETS_CACHE")
    return Path(env).expanduser() if env else hf_home() / "datasets"


def hub_snapshot(repo_id: str, repo_type: str = "model") -> Path | None:
    """The folder of ``repo_id``'s snapshot in the local Hub cache, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, repo_type=repo_type, local_files_only=True, cache_dir=str(hub_cache()))
    except Exception:  # not cached, no huggingface_hub, an invalid id: all mean "not there"
        return None
    return Path(folder)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise LoradynError("reading task.data needs the 'datasets' package: pip install 'loradyn[hf]'") from None
    return datasets


@contextlib.contextmanager
def _quiet(ds):
    """No progress bars or cache warnings from ``datasets`` while reading."""
    bars = ds.is_progress_bar_enabled()
    level = ds.logging.get_verbosity()
    ds.disable_progress_bars()
    ds.logging.set_verbosity_error()
    try:
        yield
    finally:
        ds.logging.set_verbosity(level)
        if bars:
            ds.enable_progress_bars()


def _line(err: BaseException) -> str:
    """An exception (and its cause) as one short line."""
    text = f"{type(err).__name__}: {err}"
    if err.__cause__ is not None:
        text += f" ({type(err.__cause__).__name__}: {err.__cause__})"
    return " ".join(text.split())[:300]


def _read_file(ds, path: Path):
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LoradynError(
            f"task.data {str(path)!r} has an unsupported format ({path.suffix or 'no extension'}): "
            f"give a {', '.join(FORMATS)} file, or a folder written by save_to_disk"
        )
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return ds.load_dataset(fmt, data_files=str(path), split="train", cache_dir=str(datasets_cache()), **kwargs)
    except Exception as err:
        if path.stat().st_size == 0 or "corresponds to no data" in str(err):
            raise LoradynError(f"task.data file {str(path)!r} has no rows (an empty split): give a file with rows") from None
        raise LoradynError(f"cannot read {str(path)!r} as {path.suffix.lower()} ({_line(err)})") from None


def _read_folder(ds, path: Path):
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        try:
            return ds.load_from_disk(str(path)), f"folder {path} (save_to_disk)"
        except Exception as err:
            raise LoradynError(f"cannot read the save_to_disk folder {str(path)!r} ({_line(err)})") from None
    try:
        return ds.load_dataset(str(path), cache_dir=str(datasets_cache())), f"folder {path}"
    except Exception as err:
        raise LoradynError(
            f"folder {str(path)!r} is neither a save_to_disk folder nor a folder of data files "
            f"({', '.join(FORMATS)}): {_line(err)}"
        ) from None


def _read_hub(ds, name: str):
    """A Hub dataset prepared in HF_DATASETS_CACHE (read with the network off) or snapshotted in HF_HUB_CACHE."""
    from datasets.naming import camelcase_to_snakecase

    repo_id, _, config = name.partition(":")
    where, cache = f"hub dataset {name} from the local cache", str(datasets_cache())
    *org, base = repo_id.split("/")
    prepared = Path(cache) / "___".join([*org, camelcase_to_snakecase(base)])
    if any(p.is_dir() for p in prepared.glob("*/*/*")):
        offline, ds.config.HF_HUB_OFFLINE = ds.config.HF_HUB_OFFLINE, True
        try:
            return ds.load_dataset(repo_id, config or None, cache_dir=cache), where
        except Exception as err:
            hint = "; choose one with task.data: ID:CONFIG" if "configuration" in str(err) else ""
            raise LoradynError(f"cannot read {name!r} from HF_DATASETS_CACHE={cache} ({_line(err)}){hint}") from None
        finally:
            ds.config.HF_HUB_OFFLINE = offline
    folder = hub_snapshot(repo_id, "dataset")
    if folder is None:
        raise LoradynError(
            f"task.data {name!r} is neither a local file or folder nor a dataset in the local Hugging Face cache "
            f"(HF_DATASETS_CACHE={cache}, HF_HUB_CACHE={hub_cache()}): on a machine with network run "
            f"`hf download --repo-type dataset {name}` (or huggingface-cli download --repo-type dataset {name}) "
            f"and copy the HF cache here, or datasets.load_dataset('{name}').save_to_disk(FOLDER) and set task.data to FOLDER"
        )
    try:
        return ds.load_dataset(str(folder), config or None, cache_dir=cache), where
    except Exception as err:
        raise LoradynError(f"cannot read the cached snapshot of {name!r} at {folder} ({_line(err)})") from None


def _read(data) -> tuple[dict[str, Any], str]:
    """``{"train"/"val"/"test": Dataset}`` (one ``train`` part when the source has no splits), a label."""
    ds = _datasets()
    with _quiet(ds):
        if isinstance(data, Mapping):
            unknown = sorted(set(map(str, data)) - set(_SPLIT_KEYS))
            if unknown:
                raise LoradynError(f"task.data has unknown split(s) {unknown}: use train, validation (or val), test")
            parts: dict[str, Any] = {}
            for key, value in data.items():
                if _SPLIT_KEYS[key] in parts:
                    raise LoradynError("task.data gives validation twice (validation and val): keep one")
                path = Path(str(value)).expanduser()
                if not path.exists():
                    raise LoradynError(f"task.data {key} file {str(path)!r} does not exist")
                got = _read_file(ds, path) if path.is_file() else _read_folder(ds, path)[0]
                if isinstance(got, ds.DatasetDict):
                    raise LoradynError(f"task.data {key} {str(path)!r} holds several splits: give a file or a Dataset folder")
                parts[_SPLIT_KEYS[key]] = got
            if "train" not in parts:
                raise LoradynError("task.data has no train file: give {train: ..., validation: ..., test: ...}")
            return parts, "files " + ", ".join(f"{k}={v}" for k, v in data.items())
        name = str(data)
        path = Path(name).expanduser()
        if path.is_file():
            return {"train": _read_file(ds, path)}, f"file {path}"
        if path.is_dir():
            got, where = _read_folder(ds, path)
        elif (path.suffix.lower() in FORMATS or ("/" not in name and path.suffix) or name.count(":") > 1
              or not HUB_ID.match(name.split(":")[0])):
            raise LoradynError(f"task.data file {name!r} does not exist")
        else:
            got, where = _read_hub(ds, name)
        if not isinstance(got, ds.DatasetDict):
            return {"train": got}, where
        named = {}
        for split, dset in got.items():
            named.setdefault(_DICT_SPLITS.get(split, split), dset)
        if "train" not in named and len(got) == 1:
            (only,) = got
            return {"train": got[only]}, f"{where} (its one split {only!r})"
        if "train" not in named:
            raise LoradynError(f"{where} has no train split (its splits: {', '.join(got)}): give task.data as {{train: file, ...}}")
        return {k: v for k, v in named.items() if k in _PARTS}, where


def _resolve(columns: Mapping[str, str], roles: Sequence[str], required: Iterable[Sequence[str]],
             have: Sequence[str], where: str) -> dict[str, str]:
    """role -> column of the roles present; one line for an unknown role or a missing column."""
    unknown = sorted(set(columns) - set(roles))
    if unknown:
        raise LoradynError(f"task.columns has unknown role(s) {unknown}: this kind's roles are {', '.join(roles)}")
    listing = ", ".join(have) or "(none)"
    for role, col in columns.items():
        if col not in have:
            raise LoradynError(f"column {col!r} (role {role}) is not in {where}; its columns are: {listing}")
    found = {r: columns.get(r, r) for r in roles if columns.get(r, r) in have}
    groups = [tuple(g) for g in required]
    if groups and not any(all(r in found for r in g) for g in groups):
        best = max(groups, key=lambda g: sum(r in found for r in g))
        role = next(r for r in best if r not in found)
        alts = " or ".join("+".join(g) for g in groups)
        raise LoradynError(
            f"no column for role {role!r} in {where} (needs {alts}); its columns are: {listing}; "
            f"map one with task.columns: {{{role}: COLUMN}}"
        )
    return found


def _rows(dset, found: dict[str, str], needed: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    """The rows as dicts role -> value, without those where a needed role is empty; and the drop count."""
    table = dset.select_columns(sorted(set(found.values()))).to_list()
    rows = [{role: row[col] for role, col in found.items()} for row in table]
    kept = [r for r in rows if all(r.get(role) is not None for role in needed)]
    return kept, len(rows) - len(kept)


def _subset(rows: list, n: int, seed: int) -> list:
    """The first ``n`` rows after a shuffle with ``random.Random(seed)``; all rows, as given, when ``n`` is 0
    or not below their number."""
    if n <= 0 or n >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]


AUTO_SPLIT_FRACTION, AUTO_SPLIT_MAX = 0.1, 1000  # a carved split of size 0 (the default): 10 % of the rows


def load_splits(data, columns: Mapping[str, str] | None, *, roles: Sequence[str],
                required: Iterable[Sequence[str]] = (), n_train: int = 0, n_val: int = 0,
                n_test: int = 0, split_seed: int = 0) -> Splits:
    """Read ``task.data`` and return its train / validation / test rows (see the module docstring).

    Args:
        data: a file, folder or cached Hub id (str or path), or ``{train, validation|val, test}`` files.
        columns: role -> the data's column (``task.columns``); a role not given is read from the
            column of the same name when there is one.
        roles: every role the task kind knows (``text``, ``text_pair``, ``label``, ...).
        required: alternatives, one of which must be present in full, e.g.
            ``[("prompt", "completion"), ("messages",)]``.
        n_train: train rows used (0: all).
        n_val, n_test: rows carved for a split the source lacks (0: 10 % of the rows, at least 1 and
            at most 1000); for a split the source gives, its rows used (0: all).
        split_seed: seed of the split (as in :func:`~loradyn.tasks.data.split_examples`) and of the subsets.

    Raises:
        LoradynError: a missing file, an unsupported format, a dataset not in the local cache, a
            missing column, too few rows or an empty split (one line each).
    """
    parts, where = _read(data)
    columns = {str(k): str(v) for k, v in (columns or {}).items()}
    have = tuple(parts["train"].column_names)
    found = _resolve(columns, roles, required, have, where)
    needed = sorted({r for g in required for r in g if all(x in found for x in g)})
    rows, dropped = {}, 0
    for part, dset in parts.items():
        if part != "train":
            _resolve(found, roles, (), tuple(dset.column_names), f"the {part} split of {where}")
        rows[part], n = _rows(dset, found, needed)
        dropped += n
    label_names = None
    feature = parts["train"].features.get(found.get("label", ""))
    if feature is not None and type(feature).__name__ == "ClassLabel":
        label_names = tuple(feature.names)
    carve = [p for p in ("val", "test") if p not in rows]
    auto = max(1, min(AUTO_SPLIT_MAX, round(AUTO_SPLIT_FRACTION * len(rows["train"]))))
    n_val, n_test = (n if n or part not in carve else auto for part, n in (("val", n_val), ("test", n_test)))
    if carve:
        train, val, test = split_examples(rows["train"], n_val=n_val if "val" in carve else 0,
                                          n_test=n_test if "test" in carve else 0, seed=split_seed, n_train=n_train)
        rows["train"] = train
        rows.setdefault("val", val)
        rows.setdefault("test", test)
        how = (f"split by split_seed={split_seed}" if len(carve) == 2
               else f"{carve[0]} carved from train (split_seed={split_seed})")
    else:
        rows["train"] = _subset(rows["train"], n_train, split_seed)
        how = "splits as given"
    rows["val"] = rows["val"] if "val" in carve else _subset(rows["val"], n_val, split_seed)
    rows["test"] = rows["test"] if "test" in carve else _subset(rows["test"], n_test, split_seed)
    for part in _PARTS:
        if not rows[part]:
            raise LoradynError(f"the {part} split of {where} is empty: {_FIX[part]}")
    source = f"{where}; {how}" + (f"; {dropped} rows with an empty {'/'.join(needed)} dropped" if dropped else "")
    return Splits(rows["train"], rows["val"], rows["test"], have, source, dict(found), label_names)


def _label(value: Any, split: str):
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise LoradynError(f"label {value!r} in the {split} split is neither a string nor an integer: fix the label column")


def encode_labels(splits: Splits) -> tuple[Splits, tuple[str, ...]]:
    """Labels mapped to ``0..K-1`` and the K class names (strings).

    The classes are those of the train split in a stable order: sorted integers when every label is
    an integer, else sorted strings. A ``datasets.ClassLabel`` column keeps its integers and names.

    Raises:
        LoradynError: no label role, fewer than 2 classes in train, or a validation/test label that
            train never has (one line naming the values and the split).
    """
    if not all("label" in row for part in _PARTS for row in getattr(splits, part)):
        raise LoradynError("the data has no label role: map it with task.columns: {label: COLUMN}")
    labelled = {p: [_label(r["label"], p) for r in getattr(splits, p)] for p in _PARTS}
    seen = set(labelled["train"])
    for part in ("val", "test"):
        unseen = sorted({repr(v) for v in labelled[part]} - {repr(v) for v in seen})
        if unseen:
            raise LoradynError(
                f"label value(s) {', '.join(unseen[:10])} in the {part} split never occur in train "
                f"({splits.source}): give {part} rows whose labels train has, or let the seeded split carve {part}"
            )
    if len(seen) < 2:
        raise LoradynError(f"train has {len(seen)} label value(s) {sorted(map(repr, seen))}: classification needs at least 2")
    if splits.label_names is not None and all(isinstance(v, int) and 0 <= v < len(splits.label_names) for v in seen):
        names, index = splits.label_names, {i: i for i in range(len(splits.label_names))}
    else:
        ints = all(isinstance(v, int) for v in seen)
        order = sorted(seen) if ints else sorted(seen, key=str)
        names, index = tuple(str(v) for v in order), {v: i for i, v in enumerate(order)}
        if not ints:  # an int label next to strings compares as its string
            index = {str(v): i for v, i in index.items()}
    key = (lambda v: v) if all(isinstance(k, int) for k in index) else str

    def relabel(part: str) -> list[dict[str, Any]]:
        return [{**row, "label": index[key(v)]} for row, v in zip(getattr(splits, part), labelled[part])]

    out = dataclasses.replace(splits, train=relabel("train"), val=relabel("val"), test=relabel("test"))
    return out, tuple(names)


def describe(splits: Splits) -> str:
    """A few lines for ``loradyn validate``: the source, the columns found, the roles, the split sizes."""
    roles = ", ".join(f"{role} <- {col}" for role, col in splits.roles.items()) or "(none)"
    sizes = ", ".join(f"{k} {v}" for k, v in splits.sizes.items())
    return "\n".join([f"data: {splits.source}", f"columns: {', '.join(splits.columns)}",
                      f"roles: {roles}", f"rows: {sizes}"])
