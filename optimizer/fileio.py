"""Atomic file and directory writes, output checks, hashes: nothing half-written is ever left behind,
and nothing of the user's is ever replaced by accident.

Three rules every writer of the product follows by going through this module:

- a file or directory is written under a temporary name beside its target and renamed onto it only
  when the writer succeeded (``atomic_path`` / ``atomic_dir``); a previous output directory is
  renamed aside, the new one renamed in, and only then the old one removed — never deleted first;
- an existing non-empty directory is replaced only when it is a previous vitopt output of the same
  kind (a ``.vitopt`` marker inside it), or when the user said ``--force`` (``check_output``);
- every temporary file and directory is registered while it exists, so a signal handler can remove
  them all (``remove_temporaries``), and gets the user's umask, not mkstemp's 0600.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .errors import VitoptError
from .signals import raise_if_stopped

MARKER = ".vitopt"          # inside every output directory: {"kind": ...}
FILE = "file"               # the kind of a plain output file (no marker)

_temporaries: dict = {}     # temporary path -> final path (None for scratch directories)
_forced: set = set()        # output directories the user allowed to replace (--force)
_lock = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _register(tmp: Path, final: Optional[Path]) -> None:
    with _lock:
        _temporaries[Path(tmp)] = final


def _unregister(tmp: Path) -> None:
    with _lock:
        _temporaries.pop(Path(tmp), None)


def remove_temporaries() -> list:
    """Remove every temporary file and directory the product still has open; returns their paths.

    Called by the CLI when a signal stops it; safe to call twice and from a signal handler.
    """
    with _lock:
        items = list(_temporaries)
        _temporaries.clear()
    for p in items:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        # exporters may write side files (external data) next to a temporary name
        with contextlib.suppress(OSError):
            for extra in p.parent.glob(p.name + "*"):
                if extra.is_file():
                    extra.unlink()
    return items


def final_path(path: str | os.PathLike) -> str:
    """Where ``path`` will be once the temporary directory it lies in is renamed onto its target.

    Manifests and reports written while a run is still in its temporary directory record this, so
    they never name a directory that is gone. A path outside any temporary directory is returned as is.
    """
    p = Path(path)
    with _lock:
        pairs = [(t, f) for t, f in _temporaries.items() if f is not None]
    for tmp, final in sorted(pairs, key=lambda tf: -len(str(tf[0]))):
        try:
            rel = p.relative_to(tmp)
        except ValueError:
            continue
        return str(final_path(final / rel))
    return str(path)


def final_paths(obj):
    """``obj`` (JSON-like) with every string that names a path inside a temporary directory mapped
    through ``final_path``."""
    if isinstance(obj, dict):
        return {k: final_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [final_paths(v) for v in obj]
    if isinstance(obj, (str, Path)):
        with _lock:
            temps = [str(t) for t, f in _temporaries.items() if f is not None]
        s = str(obj)
        if any(t in s for t in temps):
            for tmp in sorted(temps, key=len, reverse=True):
                if tmp in s:
                    s = s.replace(tmp, final_path(tmp))
            return s
    return obj


def _name_final(e: OSError, tmp: Path) -> None:
    """An OSError about a temporary name names the final path instead (the user never sees the other)."""
    if e.filename and str(e.filename).startswith(str(tmp)):
        e.filename = final_path(e.filename)


def _check_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitoptError(f"cannot create output directory {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise VitoptError(f"output directory {parent} is not writable")


def output_kind(path: str | os.PathLike) -> Optional[str]:
    """The kind of vitopt output directory ``path`` is ("compressed", "run", ...), or None.

    Directories written before the marker existed are recognised by their recipe / manifest.
    """
    p = Path(path)
    marker = p / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if isinstance(kind, str) else None
    try:
        if (p / "recipe.json").is_file() and json.loads((p / "recipe.json").read_text()).get("format") == "vitopt-recipe":
            return "compressed"
        if (p / "manifest.json").is_file() and "artifacts" in json.loads((p / "manifest.json").read_text()):
            return "run"
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or lies inside it."""
    return a == b or b in a.parents


def check_output(path: str | os.PathLike, kind: str = FILE, *, force: bool = False,
                 inputs: Iterable = (), flag: str = "-o") -> Path:
    """Refuse, before any work starts, an output that would lose the user's files.

    ``kind`` is ``FILE`` for a single file, else the kind of output directory ("compressed", "run").
    Refused: a file output that is a directory or one of ``inputs``; a directory output that is the
    current directory, contains it or one of ``inputs``, is a file, or is a non-empty directory that
    is not a previous vitopt output of the same kind (unless ``force``). The parent is created and
    checked for write access. Returns the path; with ``force`` the directory may later be replaced.
    """
    if path is None or str(path).strip() == "":
        raise VitoptError(f"{flag}: empty output path")
    p = Path(path)
    real = Path(os.path.realpath(p))
    ins = [Path(os.path.realpath(i)) for i in inputs if i and os.path.exists(i)]
    if kind == FILE:
        if p.is_dir():
            raise VitoptError(f"{flag} {path} is a directory; give a file path")
        if any(real == i for i in ins):
            raise VitoptError(f"{flag} {path} is one of the inputs; writing it would destroy the input")
        _check_parent(p)
        return p
    cwd = Path(os.path.realpath(os.getcwd()))
    if _inside(cwd, real):
        raise VitoptError(f"{flag} {path} is the current directory or contains it; give a new directory "
                          f"name (e.g. {flag} out/{kind})")
    for i in ins:
        if _inside(i, real):
            raise VitoptError(f"{flag} {path} contains the input {i}; give a directory outside the inputs")
    if p.exists() and not p.is_dir():
        raise VitoptError(f"{flag} {path} exists and is not a directory")
    with _lock:
        force = force or real in _forced   # an earlier check of the same command already had --force
    if p.is_dir() and any(p.iterdir()):
        found = output_kind(p)
        if found != kind and not force:
            what = f"a vitopt {found} output" if found else "not a vitopt output"
            raise VitoptError(f"{flag} {path} exists and is {what} (expected a {kind} output); "
                              "choose another directory or pass --force to replace it")
        if force:
            with _lock:
                _forced.add(real)
    _check_parent(p)
    return p


def forget_forced() -> None:
    """End of a command: its ``--force`` no longer applies to later writes in this process."""
    with _lock:
        _forced.clear()


def _new_mode(directory: bool) -> int:
    return (0o777 if directory else 0o666) & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The file gets the user's umask. Example: ``with atomic_path("m.onnx") as tmp: onnx.save(model, tmp)``
    """
    path = Path(path)
    _check_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    _register(tmp, path)
    try:
        os.chmod(tmp, _new_mode(False))
        try:
            yield tmp
        except OSError as e:
            _name_final(e, tmp)
            raise
        if tmp.exists():
            os.chmod(tmp, _new_mode(False))  # writers that recreate the file get the umask too
        raise_if_stopped()   # a signal some library swallowed still stops the output from landing
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        for extra in path.parent.glob(tmp.name + "*"):
            extra.unlink()
        _unregister(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str = "output", force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds.

    The new directory holds a ``.vitopt`` marker naming ``kind``. An existing ``path`` is swapped
    out (renamed aside, the new one renamed in, then the old one removed); it must be empty, a
    previous output of the same kind, or allowed by ``force`` / ``check_output(force=True)``.
    ``final_path`` maps paths inside the yielded directory to where they end up.
    """
    path = Path(path)
    _check_parent(path)
    if path.exists() and not path.is_dir():
        raise VitoptError(f"output {path} exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _register(tmp, path)
    old = None
    try:
        os.chmod(tmp, _new_mode(True))
        (tmp / MARKER).write_text(json.dumps({"kind": kind}) + "\n")
        os.chmod(tmp / MARKER, _new_mode(False))
        try:
            yield tmp
        except OSError as e:
            _name_final(e, tmp)
            raise
        raise_if_stopped()
        if path.exists():
            with _lock:
                allowed = force or Path(os.path.realpath(path)) in _forced
            if any(path.iterdir()) and output_kind(path) != kind and not allowed:
                raise VitoptError(f"output {path} exists and is not a vitopt {kind} output; "
                                  "choose another directory or pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            _register(old, None)
            os.replace(path, old / "content")  # aside first: a failure here leaves `path` as it was
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "content", path)  # put the previous output back
                raise
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _unregister(tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            _unregister(old)


@contextlib.contextmanager
def temp_dir(prefix: str = "vitopt-") -> Iterator[Path]:
    """A scratch directory (in $TMPDIR) removed when the block ends or a signal stops the process."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    _register(tmp, None)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _unregister(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, missing: str) -> dict:
    """A JSON object from ``path``; VitoptError(``missing``) when there is no such file, and a
    one-line error naming the file when it is not a JSON object."""
    p = Path(path)
    if not p.is_file():
        raise VitoptError(missing)
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VitoptError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise VitoptError(f"{p} is not a JSON object")
    return obj


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise VitoptError(f"{what} not found: {p}")
    if not p.is_file():
        raise VitoptError(f"{what} is not a file: {p}")
    return p


def require_dir(path: str | os.PathLike, what: str = "directory") -> Path:
    p = Path(path)
    if not p.exists():
        raise VitoptError(f"{what} not found: {p}")
    if not p.is_dir():
        raise VitoptError(f"{what} is not a directory: {p}")
    return p
