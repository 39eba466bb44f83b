"""Training data: argument checks, features and target normalised, task detection, fingerprint, holdout split."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from ...errors import ConfigError

logger = logging.getLogger(__name__)

KINDS = ("xgboost", "torch")
STRATEGIES = ("auto", "single", "distributed")
OPTIMIZERS = ("adam", "sgd")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: A target with at most this many distinct integral values is a class label.
MAX_CLASSES = 100


def _check_args(kind, *, name, rounds, epochs, batch_size, lr, optimizer, workers, checkpoint_every,
                test_size, strategy, max_restarts, params, model, timeout) -> None:
    if kind not in KINDS:
        raise ConfigError(f"train: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"train: name must be letters, digits, '_', '-' or '.', starting with a "
                          f"letter, at most 64 characters; got {name!r}")
    for label, value, lo in (("rounds", rounds, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1),
                             ("checkpoint_every", checkpoint_every, 0), ("max_restarts", max_restarts, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ConfigError(f"train: {label} must be a whole number >= {lo}, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise ConfigError(f"train: workers must be a whole number >= 1, got {workers!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"train: lr must be a positive number, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"train: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"train: strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)) \
            or not test_size > 0 or (isinstance(test_size, float) and test_size >= 1):
        raise ConfigError(f"train: test_size must be a fraction in (0, 1) or a row count, got {test_size!r}")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"train: params must be a dict of xgboost parameters, got {type(params).__name__}")
    if kind == "torch" and model is None:
        raise ConfigError("train torch: pass model= (an nn.Module, a model spec or a function returning one)")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigError(f"train: timeout must be a positive number of seconds, got {timeout!r}")


def _is_dask(obj: Any) -> bool:
    return dask.is_dask_collection(obj)


def _is_torch(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("torch")


def _to_numpy(obj: Any) -> Any:
    """A NumPy array (or a pandas DataFrame, kept) from NumPy, pandas, torch or lists."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, pd.Series):
        return obj.to_numpy()
    if _is_torch(obj) and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


@dataclass
class _Task:
    kind: str  # binary, multiclass, regression
    classes: list[Any] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes or ())


class _Table:
    """Features and target, normalised: NumPy/pandas in memory, or Dask collections."""

    def __init__(self, X: Any, y: Any, target_name: str | None):
        self.X = X
        self.y = y
        self.target_name = target_name
        self.dask = _is_dask(X) or _is_dask(y)
        self.frame = hasattr(X, "columns")
        self._n_rows: int | None = None

    # -- shape ----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        if self.frame:
            return [str(c) for c in self.X.columns]
        return [f"f{i}" for i in range(self.n_features)]

    @property
    def dtypes(self) -> list[str]:
        if self.frame:
            return [str(t) for t in self.X.dtypes]
        return [str(self.X.dtype)] * self.n_features

    @property
    def n_features(self) -> int:
        return len(self.X.columns) if self.frame else int(self.X.shape[1])

    @property
    def n_rows(self) -> int:
        if self._n_rows is None:
            if self.dask:
                n = self.X.shape[0] if not self.frame else None
                if n is None or (isinstance(n, float) and math.isnan(n)):
                    n = len(self.X)
                self._n_rows = int(n)
            else:
                self._n_rows = len(self.X)
        return self._n_rows

    @property
    def nbytes(self) -> int:
        if self.frame:
            per_row = sum(getattr(t, "itemsize", 8) or 8 for t in self.X.dtypes)
        else:
            per_row = self.X.dtype.itemsize * self.n_features
        return int(self.n_rows * (per_row + 8))

    @property
    def categorical(self) -> bool:
        return self.frame and any(str(t) == "category" for t in self.X.dtypes)

    def schema(self, task: _Task) -> dict[str, Any]:
        return {
            "features": self.names,
            "dtypes": dict(zip(self.names, self.dtypes)),
            "shape": [self.n_rows, self.n_features],
            "target": self.target_name,
            "task": task.kind,
            "classes": task.classes,
        }

    # -- labels ---------------------------------------------------------------------------

    def unique_labels(self) -> np.ndarray:
        if not self.dask:
            return _distinct(self.y)
        # Distinct values per partition, merged here: no shuffle on the cluster.
        blocks = self.y.to_delayed()
        blocks = blocks.ravel().tolist() if hasattr(blocks, "ravel") else list(blocks)
        parts = dask.compute(*[dask.delayed(_distinct)(b) for b in blocks])
        return _distinct(np.concatenate(parts)) if parts else np.asarray([])

    def encode(self, task: _Task) -> None:
        """Class labels become 0..K-1 (``task.classes`` keeps the originals), numbers float32."""
        if task.kind == "regression":
            self.y = self.y.astype("float32")
            return
        assert task.classes is not None, "a classification task knows its classes"
        classes = np.asarray(task.classes, dtype=object if isinstance(task.classes[0], str) else None)
        if np.array_equal(classes, np.arange(len(classes))):
            self.y = self.y.astype("int32") if task.kind != "binary" else self.y.astype("float32")
            return
        lookup = {v: i for i, v in enumerate(task.classes)}
        if not self.dask:
            import pandas as pd

            self.y = pd.Series(self.y).map(lookup).to_numpy().astype("float32")
        elif hasattr(self.y, "map"):
            self.y = self.y.map(lookup, meta=(self.y.name, "float32")).astype("float32")
        else:
            self.y = self.y.map_blocks(_encode_block, lookup, dtype="float32")

    # -- fingerprint ----------------------------------------------------------------------

    def header(self) -> bytes:
        return json.dumps({"names": self.names, "dtypes": self.dtypes,
                           "shape": [self.n_rows, self.n_features],
                           "target": self.target_name}, sort_keys=True).encode()


def _fingerprint(header: bytes, X: Any, y: Any, is_dask: bool, frame: bool) -> str:
    """SHA-256 over the header (names, dtypes, shape, target) and the data's bytes.

    For Dask data each partition is hashed where it lives and the digests are
    hashed in order, so the fingerprint also depends on the partitioning. An
    empty string when the data cannot be hashed (the training goes on).
    """
    try:
        return _fingerprint_of(header, X, y, is_dask, frame)
    except Exception:
        logger.warning("could not fingerprint the training data; lineage will lack it", exc_info=True)
        return ""


def _fingerprint_of(header: bytes, X: Any, y: Any, is_dask: bool, frame: bool) -> str:
    if not is_dask:
        h = hashlib.sha256(header)
        _hash_into(h, X)
        _hash_into(h, y)
        return h.hexdigest()
    return _combine_digests(header, dask.compute(*_digest_parts(X, y, frame)))


def _digest_parts(X: Any, y: Any, frame: bool) -> list[Any]:
    """One delayed SHA-256 per partition of Dask data (row-aligned features and target)."""
    import dask.array as da

    if not frame:
        X = X.rechunk({1: -1})
        if hasattr(y, "rechunk"):
            y = y.rechunk((X.chunks[0],))
    xs = X.to_delayed().ravel().tolist() if not frame else X.to_delayed()
    ys = y.to_delayed().ravel().tolist() if isinstance(y, da.Array) else y.to_delayed()
    return [dask.delayed(_part_digest)(a, b) for a, b in zip(xs, ys)]


def _combine_digests(header: bytes, digests: Any) -> str:
    h = hashlib.sha256(header)
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


class _DaskFingerprint:
    """The fingerprint of Dask data, hashed on the workers while the training runs.

    The graph is built in the caller's thread, never in a helper thread: on Python 3.11
    ``functools.cached_property`` holds one lock per property of a class, so two threads
    building dask-expr graphs over the same collections can each hold the lock the other
    waits for (dask-expr's ``_meta`` of a projection and of a concat, say) and hang.
    """

    def __init__(self, client: Any, header: bytes, X: Any, y: Any, frame: bool):
        self._client, self._header = client, header
        self._futures: list[Any] | None = None
        try:
            self._futures = client.compute(_digest_parts(X, y, frame))
        except Exception:
            logger.warning("could not fingerprint the training data; lineage will lack it", exc_info=True)

    def result(self) -> str:
        if self._futures is None:
            return ""
        futures, self._futures = self._futures, None
        try:
            return _combine_digests(self._header, self._client.gather(futures))
        except Exception:
            logger.warning("could not fingerprint the training data; lineage will lack it", exc_info=True)
            return ""
        finally:
            self._client.cancel(futures)


def _distinct(values: Any) -> np.ndarray:
    """Sorted distinct non-missing values (text sorted as text)."""
    import pandas as pd

    a = pd.Series(np.asarray(values)).dropna().unique()
    return np.asarray(sorted(a.tolist(), key=str) if a.dtype.kind == "O" else np.sort(a))


def _encode_block(block: np.ndarray, lookup: dict) -> np.ndarray:
    return np.asarray([lookup[v] for v in block.tolist()], dtype="float32")


def _hash_into(h: Any, obj: Any) -> None:
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        for _, col in obj.items():
            _hash_into(h, col)
        return
    if isinstance(obj, pd.Series):
        if obj.dtype.kind in "biufcmM":
            h.update(np.ascontiguousarray(obj.to_numpy()).data.cast("B"))
        else:
            h.update(pd.util.hash_pandas_object(obj, index=False).to_numpy().data.cast("B"))
        return
    a = np.asarray(obj)
    if a.dtype.kind == "O":
        _hash_into(h, pd.Series(a.ravel()))
        return
    h.update(np.ascontiguousarray(a).data.cast("B"))


def _part_digest(X: Any, y: Any) -> str:
    h = hashlib.sha256()
    _hash_into(h, X)
    _hash_into(h, y)
    return h.hexdigest()


def _as_table(kind: str, data: Any, target: Any) -> _Table:
    """Split ``data``/``target`` into features and labels; a ConfigError says what is wrong."""

    if kind == "torch" and _is_torch_dataset(data):
        X, y = _dataset_arrays(data)
        return _Table(X, y, None)
    if isinstance(target, (str, int, np.integer)) and not isinstance(target, bool):
        if hasattr(data, "columns"):
            if target not in data.columns:
                cols = [str(c) for c in data.columns]
                more = ", ..." if len(cols) > 12 else ""
                raise ConfigError(f"target {target!r} is not a column of the data "
                                  f"(columns: {', '.join(cols[:12])}{more})")
            X = data.drop(columns=[target])
            y = data[target]
            if not _is_dask(data):
                y = y.to_numpy()
            return _checked(_Table(X, y, str(target)))
        if isinstance(target, str):
            raise ConfigError(f"target={target!r} names a column, but the data is a "
                              f"{type(data).__name__}, not a DataFrame; pass data=(X, y)")
        arr = data if _is_dask(data) else _to_numpy(data)
        if getattr(arr, "ndim", 0) != 2 or not -arr.shape[1] <= target < arr.shape[1]:
            raise ConfigError(f"target column {target} is not in the data (shape {getattr(arr, 'shape', '?')})")
        keep = [i for i in range(arr.shape[1]) if i != target % arr.shape[1]]
        return _checked(_Table(arr[:, keep], arr[:, target], f"column {target}"))
    if target is not None:
        X, y = data, target
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
    else:
        raise ConfigError("train: pass data=DataFrame with target='column', data=(X, y), or "
                          "data=X with target=y")
    if not _is_dask(X):
        X = _to_numpy(X)
    if not _is_dask(y):
        y = _to_numpy(y)
    if hasattr(y, "columns"):
        if len(y.columns) != 1:
            raise ConfigError(f"train: the target must be one column, got {len(y.columns)}")
        y = y.iloc[:, 0] if _is_dask(y) else y.iloc[:, 0].to_numpy()
    return _checked(_Table(X, y, getattr(target, "name", None) if target is not None else None))


def _checked(t: _Table) -> _Table:
    if _is_dask(t.X) != _is_dask(t.y):
        raise ConfigError("train: features and target must both be Dask collections or both in memory")
    if not t.frame and getattr(t.X, "ndim", 0) != 2:
        raise ConfigError(f"train: features must be 2-D (rows × features), got shape {getattr(t.X, 'shape', '?')}")
    if not t.dask:
        if getattr(t.y, "ndim", 1) != 1:
            t.y = np.asarray(t.y).reshape(len(t.y), -1)
            if t.y.shape[1] != 1:
                raise ConfigError(f"train: the target must be 1-D, got shape {t.y.shape}")
            t.y = t.y[:, 0]
        if len(t.X) != len(t.y):
            raise ConfigError(f"train: features have {len(t.X)} rows but the target has {len(t.y)}")
        if len(t.X) < 4:
            raise ConfigError(f"train: {len(t.X)} rows are too few to hold some out")
        if t.frame:
            bad = [str(c) for c, d in t.X.dtypes.items() if d.kind in "OSU"]
            if bad:
                raise ConfigError(f"train: column(s) {', '.join(bad)} hold text; convert them with "
                                  ".astype('category') or drop them")
    return t


def _is_torch_dataset(obj: Any) -> bool:
    try:
        from torch.utils.data import Dataset
    except ImportError:
        return False
    return isinstance(obj, Dataset)


def _dataset_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    from torch.utils.data import TensorDataset

    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0].detach().cpu().numpy(), ds.tensors[1].detach().cpu().numpy()
    xs, ys = [], []
    for i in range(len(ds)):
        x, y = ds[i]
        xs.append(_to_numpy(x))
        ys.append(_to_numpy(y))
    return np.stack(xs), np.asarray(ys)


def _detect_task(table: _Table, params: dict | None) -> _Task:
    """Binary, multiclass or regression, from the objective if given, else from the labels."""
    objective = str((params or {}).get("objective", ""))
    y_dtype = table.y.dtype
    kind_char = getattr(y_dtype, "kind", "O")
    if objective.startswith(("reg:", "count:", "survival:")):
        return _Task("regression")
    if kind_char == "f" and not objective.startswith(("binary:", "multi:")):
        # Floats are class labels only when every value is whole and there are few.
        sample = table.y if not table.dask else table.y.head(10_000) if hasattr(table.y, "head") \
            else table.y[:10_000].compute()
        sample = np.asarray(sample, dtype="float64")
        sample = sample[~np.isnan(sample)]
        if sample.size and not np.all(np.mod(sample, 1) == 0):
            return _Task("regression")
    labels = table.unique_labels()
    if len(labels) < 2:
        raise ConfigError(f"train: the target has {len(labels)} distinct value(s); nothing to learn")
    classification = (kind_char in "biuOUS" or str(y_dtype) == "category" or objective.startswith(("binary:", "multi:"))
                      or (kind_char == "f" and np.all(np.mod(labels.astype(float), 1) == 0)))
    if not classification or (len(labels) > MAX_CLASSES and kind_char not in "OUS"):
        return _Task("regression")
    classes = [v.item() if hasattr(v, "item") else v for v in labels]
    return _Task("binary" if len(classes) == 2 else "multiclass", classes)


def _split_indices(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices, each sorted; the same for the same n, size and seed."""
    n_test = int(test_size) if test_size >= 1 else int(round(n * test_size))
    n_test = min(max(n_test, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _plain_matrix(t: "_Table") -> np.ndarray | None:
    """The features as one numeric NumPy matrix without copying, when they are one (else None)."""
    if t.dask:
        return None
    if not t.frame:
        return t.X if t.X.dtype.kind in "biuf" else None
    dtypes = set(t.X.dtypes)
    if len(dtypes) != 1 or next(iter(dtypes)).kind not in "biuf":
        return None
    return t.X.to_numpy()  # a view when the frame is one block


def _take(a: Any, idx: np.ndarray) -> Any:
    return a.iloc[idx] if hasattr(a, "iloc") else a[idx]
