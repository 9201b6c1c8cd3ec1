"""Checkpoint directories: read, write atomically, and record lineage.

Layout (compatible with PaddleNLP's ERNIE 3.0 checkpoints)::

    config.json          model config (PaddleNLP keys) + task info under "ernie_compress"
    model.safetensors    weights, by PaddleNLP parameter name (loading runs no code)
    model_state.pdparams PaddleNLP's pickle format: read (through a restricted unpickler), not written
    vocab.txt, tokenizer_config.json
    compression.json     lineage: every stage applied, with its config, parent and metrics, and
                         the sha256 of the weights it wrote

A stage never modifies its input. It writes into a temporary sibling of the output directory and
renames it into place at the end, so an interrupted run leaves no half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.sp_tokenizer import SentencePieceTokenizer, load_tokenizer
from .errors import UserError
from .lazy_weights import InMemoryWeights, SafetensorsWeights
from .models.config import ErnieConfig
from .models.ernie3_layout import config_from_model_config_json
from .models.families import config_from_dict
from .models.layouts import check_layout, layout_files, normalize_loaded

if TYPE_CHECKING:
    from .shard_progress import ShardProgress

CONFIG_FILE = "config.json"
OLD_CONFIG_FILE = "model_config.json"  # PaddleNLP before 2.5
WEIGHTS_FILE = "model.safetensors"
PADDLE_WEIGHTS_FILE = "model_state.pdparams"
# one of these holds a checkpoint's weights; an index names the shards of a sharded save
WEIGHTS_CANDIDATES = (WEIGHTS_FILE, WEIGHTS_FILE + ".index.json", PADDLE_WEIGHTS_FILE,
                      PADDLE_WEIGHTS_FILE + ".index.json")
LINEAGE_FILE = "compression.json"
LINEAGE_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_record(config: Any, version: int = 1) -> dict[str, Any]:
    """A stage config as ``{type, version, data}`` (torchao's ``config_to_dict`` convention)."""
    import dataclasses

    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {"type": type(config).__name__, "version": version, "data": _jsonable(data)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


# --- weights files ---------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the numpy arrays of a ``paddle.save`` state dict and nothing else.

    ``paddle.save`` writes a dict of name -> ``numpy.ndarray``; rebuilding those needs only the
    numpy reconstructors below. Any other global (os.system, builtins.eval, ...) is refused, so
    loading an untrusted ``.pdparams`` cannot run code.
    """

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pdparams(path: Path, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """Read a PaddleNLP ``model_state.pdparams``; only numpy arrays unless ``trust_pickle``."""
    try:
        with open(path, "rb") as f:
            if trust_pickle:
                state = pickle.load(f)  # noqa: S301 - the user vouched for this file
            else:
                state = _NumpyOnlyUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: {exc}; if you trust this file, pass --trust-pickle") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as exc:
        raise UserError(f"{path}: not a readable Paddle state dict ({exc.__class__.__name__}); "
                        f"the file is truncated or corrupt") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a dict of parameters, got {type(state).__name__}")
    out = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray):
            value = getattr(value, "numpy", lambda: value)()
        if not isinstance(value, np.ndarray):
            continue  # e.g. StructuredToParameterName@@ bookkeeping
        out[str(name)] = value
    return out


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file (BF16 widened to float32, ``lazy_weights.py``)."""
    try:
        weights = SafetensorsWeights.open(path)
        return weights.read_many(weights.names)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the weights ({exc.strerror or exc})") from None


def read_index(index_path: Path) -> dict[str, str]:
    """A sharded save's ``weight_map`` (tensor -> shard file), each shard checked to be a file in the
    index's folder."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except json.JSONDecodeError as exc:
        raise UserError(f"{index_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except (KeyError, TypeError):
        raise UserError(f"{index_path}: no 'weight_map' object naming each tensor's shard") from None
    for shard in sorted(set(weight_map.values()), key=str):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise UserError(f"{index_path}: shard name {shard!r} is not a file name in the checkpoint folder")
        if not (index_path.parent / shard).is_file():
            raise UserError(f"{index_path}: names shard {shard}, which is missing; the save is incomplete")
    return weight_map


def read_sharded(index_path: Path, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """The weights of a sharded save: ``*.index.json``'s ``weight_map`` names each tensor's shard."""
    weight_map = read_index(index_path)
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        part = (read_safetensors(shard_path) if shard.endswith(".safetensors")
                else read_pdparams(shard_path, trust_pickle=trust_pickle))
        state.update(part)
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise UserError(f"{index_path}: {len(missing)} tensor(s) it lists are not in their shards, e.g. {missing[0]}")
    return state


def weights_file(path: Path) -> Path:
    """The one weights file (or sharded index) of a checkpoint folder; none, or several, is refused."""
    present = [path / name for name in WEIGHTS_CANDIDATES if (path / name).is_file()]
    if not present:
        raise UserError(f"{path}: no weights ({WEIGHTS_FILE}, {PADDLE_WEIGHTS_FILE} or a sharded "
                        f"{WEIGHTS_FILE}.index.json)")
    if len(present) > 1:
        raise UserError(f"{path}: holds weights in more than one layout ({', '.join(p.name for p in present)}); "
                        f"keep one checkpoint per folder")
    return present[0]


def read_weights(path: Path, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """A checkpoint folder's weights, from whichever single weights file (or sharded index) it has."""
    weights = weights_file(path)
    if weights.name.endswith(".index.json"):
        return read_sharded(weights, trust_pickle)
    if weights.name == PADDLE_WEIGHTS_FILE:
        return read_pdparams(weights, trust_pickle=trust_pickle)
    return read_safetensors(weights)


def open_weights(path: Path, trust_pickle: bool = False) -> SafetensorsWeights | InMemoryWeights:
    """A checkpoint folder's weights opened for reading one tensor at a time: safetensors (single or
    sharded) from their headers; a ``.pdparams`` pickle cannot be read lazily, so it is read whole."""
    weights = weights_file(path)
    if weights.name == WEIGHTS_FILE:
        return SafetensorsWeights.open(weights)
    if weights.name == WEIGHTS_FILE + ".index.json":
        weight_map = read_index(weights)
        if all(shard.endswith(".safetensors") for shard in weight_map.values()):
            return SafetensorsWeights.open_shards(weights, weight_map)
    return InMemoryWeights(read_weights(path, trust_pickle))


def write_safetensors(path: Path, state: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = {"format": "np"}) -> None:  # noqa: B006 - never mutated
    from safetensors.numpy import save_file

    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as exc:  # safetensors reports I/O failures as its own error type
        if any(s in str(exc) for s in ("StorageFull", "code: 28", "os error 28", "No space left")):
            raise OSError(errno.ENOSPC, "no space left on device") from None
        raise


# --- the checkpoint --------------------------------------------------------------------------
class CheckpointFacts:
    """What a checkpoint says besides its weights (needs ``path``, ``config``, ``lineage`` and
    ``tokenizer_dir`` attributes): its task, lineage and tokenizer. Shared by :class:`Checkpoint`
    (weights in memory), :class:`CheckpointHeader` (none read yet) and the lazy checkpoint."""

    path: Path | None
    config: ErnieConfig
    lineage: dict[str, Any]
    tokenizer_dir: Path | None

    @property
    def task(self) -> dict[str, Any] | None:
        return self.config.extra.get("ernie_compress", {}).get("task")

    @property
    def max_seq_length(self) -> int:
        return int(self.config.extra.get("ernie_compress", {}).get("max_seq_length", 128))

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.lineage.get("stages", [])

    @property
    def weights_sha256(self) -> str | None:
        return self.lineage.get("weights_sha256")

    def tokenizer(self):
        """The checkpoint's tokenizer (or the one ``tokenizer_dir`` points to), checked against its
        vocabulary size."""
        folder = self.tokenizer_dir or self.path
        if folder is None:
            raise UserError("this checkpoint has no directory to read a vocabulary from")
        tokenizer = load_tokenizer(folder)
        if isinstance(tokenizer, SentencePieceTokenizer):  # the release pads its embedding matrix
            if tokenizer.vocab_size > self.config.vocab_size:
                raise UserError(f"{folder}: tokenizer.model has {tokenizer.vocab_size} pieces but the model's "
                                f"vocab_size is {self.config.vocab_size}; the tokenizer does not belong to "
                                f"these weights")
        elif tokenizer.vocab_size != self.config.vocab_size:
            raise UserError(f"{folder}: vocab.txt has {tokenizer.vocab_size} tokens but the model's "
                            f"vocab_size is {self.config.vocab_size}; the vocabulary does not belong to "
                            f"these weights")
        return tokenizer


@dataclass
class Checkpoint(CheckpointFacts):
    """A checkpoint in memory: config, weights (numpy), tokenizer directory, task and lineage."""

    path: Path | None
    config: ErnieConfig
    state: dict[str, np.ndarray]
    lineage: dict[str, Any] = field(default_factory=dict)
    tokenizer_dir: Path | None = None  # --tokenizer: where the vocabulary is, when not in ``path``


@dataclass
class CheckpointHeader(CheckpointFacts):
    """A checkpoint directory's config (as config.json says, before its weights' layout is
    normalized) and lineage, read without touching the weights."""

    path: Path
    config: ErnieConfig
    raw: dict[str, Any]  # config.json as read
    lineage: dict[str, Any]
    tokenizer_dir: Path | None = None

    @property
    def ours(self) -> bool:
        """Written by this package (its config keys or a lineage): decides how ambiguous layouts read."""
        return "ernie_compress" in self.raw or bool(self.lineage)


@dataclass
class LoadPolicy:
    """Process-wide defaults set by the CLI's --trust-pickle / --ignore-integrity."""

    trust_pickle: bool = False
    ignore_integrity: bool = False


load_policy = LoadPolicy()


def read_checkpoint_header(path: str | Path, tokenizer: str | Path | None = None,
                           check_tokenizer: bool = False) -> CheckpointHeader:
    """A checkpoint directory's config and lineage; with ``check_tokenizer`` its tokenizer (or the one
    in ``tokenizer``) is loaded and checked too. Nothing here reads a weight, so a checkpoint that
    cannot serve is refused before its weights are touched."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory")
    config_path = path / CONFIG_FILE
    if not config_path.is_file() and (path / OLD_CONFIG_FILE).is_file():
        config_path = path / OLD_CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{path}: no {CONFIG_FILE}; not a checkpoint directory")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        if config_path.name == OLD_CONFIG_FILE:
            raw = config_from_model_config_json(raw)
        config = config_from_dict(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    header = CheckpointHeader(path, config, raw, _read_lineage(path), _tokenizer_dir(tokenizer))
    if check_tokenizer:
        try:
            header.tokenizer()
        except UserError as exc:
            hint = "" if tokenizer is not None else "; pass --tokenizer DIR to use the tokenizer in DIR"
            raise UserError(f"{exc}{hint}") from None
    return header


def _tokenizer_dir(tokenizer: str | Path | None) -> Path | None:
    if tokenizer is None:
        return None
    folder = Path(tokenizer).expanduser()
    if not folder.is_dir():
        raise UserError(f"--tokenizer {folder}: not a directory (point it to the folder holding vocab.txt "
                        f"or tokenizer.model)")
    return folder


def _read_lineage(path: Path) -> dict[str, Any]:
    lineage_path = path / LINEAGE_FILE
    if not lineage_path.is_file():
        return {}
    try:
        return json.loads(lineage_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{lineage_path}: invalid JSON ({exc.msg})") from None


def check_integrity(header: CheckpointHeader, ignore_integrity: bool) -> None:
    """Refuse weights whose sha256 differs from the one the lineage recorded: ``model.safetensors``,
    or a sharded save's index and each of its shards (``shards_sha256``). Files are hashed in blocks:
    the memory held is one block, whatever their size."""
    if ignore_integrity or not header.lineage.get("weights_sha256"):
        return
    if not any((header.path / name).is_file() for name in WEIGHTS_CANDIDATES):
        return  # no weights at all: reading them says so
    single, index = header.path / WEIGHTS_FILE, header.path / (WEIGHTS_FILE + ".index.json")
    sharded = isinstance(header.lineage.get("shards_sha256"), dict)
    present = single if single.is_file() else index if index.is_file() else None
    if present is None or (present == index) != sharded:  # weights swapped for another file kind
        recorded = "a sharded save (index and shards)" if sharded else WEIGHTS_FILE
        raise UserError(f"{header.path}: {LINEAGE_FILE} records the sha256 of {recorded}, which this folder does "
                        f"not hold; the weights are not the ones it records (pass --ignore-integrity to load anyway)")
    if present == single:
        _check_sha256(single, header.lineage["weights_sha256"])
    else:
        _check_sha256(index, header.lineage["weights_sha256"])
        for shard, expected in header.lineage["shards_sha256"].items():
            if Path(shard).name != shard or not (header.path / shard).is_file():
                raise UserError(f"{header.path}: shard {shard} recorded in {LINEAGE_FILE} is missing; the save "
                                f"is incomplete")
            _check_sha256(header.path / shard, expected)


def _check_sha256(weights: Path, expected: str) -> None:
    actual = sha256_file(weights)
    if actual != expected:
        raise UserError(
            f"{weights}: sha256 {actual[:12]}… does not match {expected[:12]}… recorded "
            f"in {LINEAGE_FILE}; the weights were changed or corrupted "
            f"(pass --ignore-integrity to load anyway)")


def load_checkpoint(path: str | Path, trust_pickle: bool | None = None,
                    ignore_integrity: bool | None = None, tokenizer: str | Path | None = None,
                    check_tokenizer: bool = False) -> Checkpoint:
    """Load a checkpoint directory, checking the weights against the recorded sha256; with
    ``check_tokenizer`` its tokenizer (or ``tokenizer``'s) is checked before any weight is read."""
    trust_pickle = load_policy.trust_pickle if trust_pickle is None else trust_pickle
    ignore_integrity = load_policy.ignore_integrity if ignore_integrity is None else ignore_integrity
    header = read_checkpoint_header(path, tokenizer, check_tokenizer)
    check_integrity(header, ignore_integrity)
    state = read_weights(header.path, trust_pickle)
    try:
        config, state = normalize_loaded(header.config, state, header.raw, header.ours)
    except UserError as exc:
        raise UserError(f"{header.path}: {exc}") from None
    return Checkpoint(path=header.path, config=config, state=state, lineage=header.lineage,
                      tokenizer_dir=header.tokenizer_dir)


# --- writing ---------------------------------------------------------------------------------
def current_umask() -> int:
    """The process's umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_modes(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``mkdir()`` / ``open()`` would.

    ``tempfile.mkdtemp`` creates ``drwx------`` and safetensors writes ``-rw-------``; after the
    atomic rename those private modes would stay, so a serving container running as another user
    could not read the checkpoint. Directories get ``0o777 & ~umask``, files ``0o666 & ~umask``
    (``0o777 & ~umask`` if the owner could execute them)."""
    mask = current_umask()
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        else:
            executable = os.stat(path).st_mode & 0o100
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success rename it to ``out``, else remove it."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise UserError(f"output {out} already exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise UserError(f"cannot create output {out}: {exc.strerror}") from None
    try:
        yield tmp
        give_umask_modes(tmp)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in _STORAGE_ERRORS:
            raise UserError(f"cannot write {out}: {exc.strerror or _STORAGE_ERRORS[exc.errno]}; nothing was "
                            f"written (free space or fix permissions and run again)") from None
        raise
    except Exception:
        full = _storage_full(tmp)  # some writers (Paddle's C++ streams) fail silently when full
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise UserError(f"cannot write {out}: no space left on device; nothing was written "
                            f"(free space and run again)") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _storage_full(path: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


# Errors of the storage rather than of the program: reported as one line, output removed.
_STORAGE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_model_files(directory: Path, config: ErnieConfig, state: dict[str, np.ndarray], tokenizer,
                      layout: str = "ours") -> None:
    """config.json, model.safetensors and the tokenizer of ``layout`` into ``directory``."""
    keys, state, metadata = layout_files(config, state, layout)
    (directory / CONFIG_FILE).write_text(json.dumps(_jsonable(keys), indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    write_safetensors(directory / WEIGHTS_FILE, state, metadata)
    tokenizer.save(directory)


def save_checkpoint(out: str | Path, config: ErnieConfig, state: dict[str, np.ndarray],
                    tokenizer, stage: dict[str, Any], parent: CheckpointFacts | None = None,
                    overwrite: bool = False, extra_files: dict[str, Any] | None = None,
                    layout: str = "ours") -> Path:
    """Write a checkpoint directory atomically and append ``stage`` to the parent's lineage.

    ``stage`` holds at least ``name``; ``config`` (a :func:`config_record`), ``metrics`` and
    ``seconds`` are recorded as given. ``extra_files`` maps file names to JSON-able content.
    ``layout`` (see ``models/layouts.py``) is checked before anything is written.
    """
    check_layout(config, layout)
    with atomic_output_dir(out, overwrite) as tmp:
        try:
            write_model_files(tmp, config, state, tokenizer, layout)
            for name, content in (extra_files or {}).items():
                (tmp / name).write_text(json.dumps(_jsonable(content), indent=2) + "\n")
            _write_lineage(tmp, stage, parent, layout, {"weights_sha256": sha256_file(tmp / WEIGHTS_FILE)})
        except OSError as exc:
            raise UserError(f"cannot write checkpoint {out}: {exc.strerror}") from None
    return Path(out).expanduser().resolve()


def _write_lineage(directory: Path, stage: dict[str, Any], parent: CheckpointFacts | None, layout: str,
                   digests: dict[str, Any]) -> None:
    """compression.json: the parent's stages, then ``stage`` (with its time, layout and parent), and the
    weights' digests (``weights_sha256``; a sharded save adds ``shards_sha256``)."""
    stages = list(parent.stages) if parent is not None else []
    record = dict(stage)
    record.setdefault("time", now_iso())
    record["layout"] = layout
    if parent is not None:
        record["parent"] = {"path": str(parent.path) if parent.path else None,
                            "weights_sha256": parent.weights_sha256}
    stages.append(_jsonable(record))
    lineage = {"format_version": LINEAGE_VERSION, **digests, "stages": stages}
    (directory / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")


def shard_name(index: int, count: int) -> str:
    """The ``i``-th (from 0) of ``count`` shard files, named as transformers and PaddleFormers name them."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def save_sharded_checkpoint(out: str | Path, config: ErnieConfig, groups: Iterable[dict[str, np.ndarray]],
                            count: int, tokenizer, stage: dict[str, Any], parent: CheckpointFacts | None = None,
                            overwrite: bool = False, layout: str = "ours", progress: ShardProgress | None = None
                            ) -> Path:
    """Write a checkpoint whose weights come ``count`` groups at a time (e.g. one decoder layer each),
    each group written to its own shard as it arrives, so only one group is ever in memory:
    ``model-0000i-of-0000N.safetensors`` and ``model.safetensors.index.json`` (the Hugging Face sharded
    layout; each group converted to ``layout`` on its own). The lineage records the index's sha256 as
    ``weights_sha256`` and each shard's under ``shards_sha256``; written atomically like every checkpoint.
    With ``progress`` (``shard_progress.py``: a resumable write) the shards go to its folder and are recorded
    one by one, ``groups`` yields only the groups after those it has finished, and the shards are moved into
    the checkpoint once all are there. ``config`` is converted after the last group (a walk may complete
    its entries while it runs)."""
    check_layout(config, layout)
    with atomic_output_dir(out, overwrite) as tmp:
        try:
            staging = progress.directory if progress is not None else tmp
            done = list(progress.shards) if progress is not None else []
            for i, group in enumerate(groups, start=len(done)):
                _, state, metadata = layout_files(config, group, layout)
                name = shard_name(i, count)
                write_safetensors(staging / name, state, metadata)
                if progress is not None:
                    progress.add(name, list(state), sum(v.nbytes for v in state.values()))
                    done.append(progress.shards[-1])
                else:
                    done.append({"name": name, "sha256": sha256_file(tmp / name), "keys": list(state),
                                 "bytes": sum(v.nbytes for v in state.values())})
                del group, state
            if len(done) != count:
                raise ValueError(f"{len(done)} weight groups came, {count} were announced")
            if progress is not None:
                for shard in done:
                    os.replace(staging / shard["name"], tmp / shard["name"])
            weight_map = {key: shard["name"] for shard in done for key in shard["keys"]}
            index = tmp / (WEIGHTS_FILE + ".index.json")
            index.write_text(json.dumps({"metadata": {"total_size": sum(s["bytes"] for s in done)},
                                         "weight_map": weight_map}, indent=2) + "\n")
            keys = layout_files(config, {}, layout)[0]
            (tmp / CONFIG_FILE).write_text(json.dumps(_jsonable(keys), indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
            tokenizer.save(tmp)
            _write_lineage(tmp, stage, parent, layout, {"weights_sha256": sha256_file(index),
                                                        "shards_sha256": {s["name"]: s["sha256"] for s in done}})
        except OSError as exc:
            raise UserError(f"cannot write checkpoint {out}: {exc.strerror}") from None
    return Path(out).expanduser().resolve()
