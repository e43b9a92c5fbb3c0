"""Weights manifest, download with hash check, torch.hub cache and offline use.

Files land in torch.hub's checkpoint cache ($TORCH_HOME/hub/checkpoints) under torchvision's file
names, so a file torchvision already downloaded is reused and vice versa.
"""

import contextlib
import functools
import hashlib
import http.client
import json
import logging
import os
import pickle
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from edgezoo.errors import DownloadError, HashMismatchError, WeightsError
from edgezoo.fileio import atomic_path, file_sha256, remove_stale_partials
from edgezoo.tasks import task_names

logger = logging.getLogger(__name__)

BASE_URL_ENV = "EDGEZOO_WEIGHTS_URL"
DEFAULT_TIMEOUT_S = 30.0
MANIFEST_FORMAT_VERSION = 1
# The same pattern torch.hub.check_hash uses to read the sha256 prefix out of a file name.
HASH_IN_FILE_NAME = re.compile(r"-([a-f0-9]*)\.")

_CHUNK_BYTES = 1 << 20
# torch.load(weights_only=True) names the blocked object of a pickle that holds code
# ("unsupported GLOBAL ..."); any other refusal is a file that is no pickle at all.
_REFUSED_OBJECT = "GLOBAL"
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_TAG_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")


@functools.cache
def load_manifest() -> dict[str, Any]:
    """Read and validate the packaged weights_manifest.json (once per process; do not mutate)."""
    text = resources.files("edgezoo").joinpath("weights_manifest.json").read_text("utf-8")
    manifest = json.loads(text)
    problems = validate_manifest(manifest)
    if problems:
        raise WeightsError(
            "weights_manifest.json is invalid; regenerate it with tools/make_manifest.py:\n  "
            + "\n  ".join(problems)
        )
    return manifest


def validate_manifest(manifest: Any) -> list[str]:
    """Check a manifest against its schema by hand; return one message per problem (none: valid)."""
    problems: list[str] = []
    if not isinstance(manifest, dict):
        return ["the manifest is not a JSON object"]
    _check_keys(problems, "manifest", manifest, {"format_version", "models"}, {"generated_by"})
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        problems.append(f"format_version must be {MANIFEST_FORMAT_VERSION}")
    models = manifest.get("models")
    if not isinstance(models, dict) or not models:
        problems.append("models must be a non-empty object")
        return problems
    for name, entry in models.items():
        _validate_model(problems, name, entry, models)
    return problems


def _validate_model(problems: list[str], name: str, entry: Any, models: dict) -> None:
    where = f"models.{name}"
    if not isinstance(entry, dict):
        problems.append(f"{where} is not an object")
        return
    required = {"task", "num_classes", "num_params", "input_size", "head", "default_weights"}
    optional = {
        "torchvision_name",
        "description",
        "pretrained_backbone",
        "preprocessing",
        "unused_checkpoint_prefixes",
        "head_weight",
        "head_priors",
    }
    _check_keys(problems, where, entry, required | {"weights"}, optional)
    if entry.get("task") not in task_names():
        problems.append(f"{where}.task must be one of {task_names()}")
    for key in ("num_classes", "num_params"):
        if not _is_positive_int(entry.get(key)):
            problems.append(f"{where}.{key} must be a positive integer")
    size = entry.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(map(_is_positive_int, size))):
        problems.append(f"{where}.input_size must be [C, H, W] of positive integers")
    if "head_priors" in entry and not _is_positive_int(entry["head_priors"]):
        problems.append(f"{where}.head_priors must be a positive integer")
    for key in ("head", "head_weight", "torchvision_name", "description"):
        if key in entry and not (isinstance(entry[key], str) and entry[key]):
            problems.append(f"{where}.{key} must be a non-empty string")
    weights = entry.get("weights")
    if not isinstance(weights, dict):
        problems.append(f"{where}.weights must be an object (tag -> weights record)")
        weights = {}
    for tag, record in weights.items():
        if not _TAG_PATTERN.match(tag):
            problems.append(f"{where}.weights.{tag}: tags are upper-case like IMAGENET1K_V1")
        _validate_record(problems, f"{where}.weights.{tag}", record, entry)
    default = entry.get("default_weights")
    if weights and default not in weights:
        problems.append(f"{where}.default_weights must name one of {sorted(weights)}")
    if not weights and default is not None:
        problems.append(f"{where}.default_weights must be null when there are no weights")
    if not weights and "preprocessing" not in entry:
        problems.append(f"{where} has no weights, so it needs its own preprocessing")
    if "preprocessing" in entry:
        _validate_preprocessing(problems, f"{where}.preprocessing", entry["preprocessing"])
    if "pretrained_backbone" in entry:
        _validate_backbone(problems, f"{where}.pretrained_backbone", entry, models)
    unused = entry.get("unused_checkpoint_prefixes")
    if unused is not None and not (
        isinstance(unused, list) and unused and all(isinstance(p, str) and p for p in unused)
    ):
        problems.append(f"{where}.unused_checkpoint_prefixes must be a list of key prefixes")


def _validate_record(problems: list[str], where: str, record: Any, entry: dict) -> None:
    if not isinstance(record, dict):
        problems.append(f"{where} is not an object")
        return
    required = {
        "url",
        "file_name",
        "sha256_prefix",
        "source",
        "license",
        "dataset",
        "metrics",
        "num_params",
        "preprocessing",
    }
    _check_keys(problems, where, record, required, {"recipe", "file_size_mb", "sha256"})
    for key in ("url", "file_name", "source", "license", "dataset", "recipe"):
        if key in record and not (isinstance(record[key], str) and record[key]):
            problems.append(f"{where}.{key} must be a non-empty string")
    url, file_name = record.get("url", ""), record.get("file_name", "")
    if isinstance(url, str) and not url.startswith("https://"):
        problems.append(f"{where}.url must be an https URL")
    if isinstance(url, str) and isinstance(file_name, str) and url.rsplit("/", 1)[-1] != file_name:
        problems.append(f"{where}.file_name must be the last part of its url")
    prefix = record.get("sha256_prefix")
    if not (isinstance(prefix, str) and re.fullmatch(r"[0-9a-f]{8,64}", prefix)):
        problems.append(f"{where}.sha256_prefix must be 8 to 64 lower-case hex digits")
    elif isinstance(file_name, str) and hash_prefix_of(file_name) != prefix:
        problems.append(f"{where}.sha256_prefix must equal the hash in the file name")
    full = record.get("sha256", prefix)
    if not (isinstance(full, str) and isinstance(prefix, str) and full.startswith(prefix)):
        problems.append(f"{where}.sha256 must be the full hash that sha256_prefix begins")
    elif "sha256" in record and not re.fullmatch(r"[0-9a-f]{64}", full):
        problems.append(f"{where}.sha256 must be 64 lower-case hex digits")
    metrics = record.get("metrics")
    if not (
        isinstance(metrics, dict)
        and metrics
        and all(isinstance(v, int | float) and 0 <= v <= 100 for v in metrics.values())
    ):
        problems.append(f"{where}.metrics must map metric names to percentages")
    if record.get("num_params") != entry.get("num_params"):
        problems.append(f"{where}.num_params must equal the model's num_params")
    if "file_size_mb" in record and not (
        isinstance(record["file_size_mb"], int | float) and record["file_size_mb"] > 0
    ):
        problems.append(f"{where}.file_size_mb must be a positive number")
    _validate_preprocessing(problems, f"{where}.preprocessing", record.get("preprocessing"))


def _validate_preprocessing(problems: list[str], where: str, prep: Any) -> None:
    if not isinstance(prep, dict):
        problems.append(f"{where} must be an object")
        return
    _check_keys(problems, where, prep, {"mean", "std", "resize", "crop", "interpolation"}, set())
    for key, low in (("mean", 0.0), ("std", 1e-6)):
        values = prep.get(key)
        if not (
            isinstance(values, list)
            and len(values) == 3
            and all(isinstance(v, float) and low <= v <= 1 for v in values)
        ):
            problems.append(f"{where}.{key} must be three floats in [{low:g}, 1]")
    resize = prep.get("resize")
    if not (
        _is_positive_int(resize)
        or (isinstance(resize, list) and len(resize) == 2 and all(map(_is_positive_int, resize)))
    ):
        problems.append(f"{where}.resize must be a shorter-side length or [H, W]")
    crop = prep.get("crop")
    if crop is not None and not _is_positive_int(crop):
        problems.append(f"{where}.crop must be a positive integer or null")
    if prep.get("interpolation") not in _INTERPOLATIONS:
        problems.append(f"{where}.interpolation must be one of {_INTERPOLATIONS}")


def _validate_backbone(problems: list[str], where: str, entry: dict, models: dict) -> None:
    backbone = entry["pretrained_backbone"]
    if not isinstance(backbone, dict):
        problems.append(f"{where} must be an object")
        return
    _check_keys(problems, where, backbone, {"model", "weights"}, set())
    model = models.get(backbone.get("model"))
    if not isinstance(model, dict):
        problems.append(f"{where}.model must name another model of the manifest")
    elif backbone.get("weights") not in model.get("weights", {}):
        problems.append(f"{where}.weights must be a weights tag of {backbone.get('model')}")


def _check_keys(
    problems: list[str], where: str, obj: dict, required: set[str], optional: set[str]
) -> None:
    for key in sorted(required - obj.keys()):
        problems.append(f"{where} lacks {key!r}")
    for key in sorted(obj.keys() - required - optional):
        problems.append(f"{where} has an unknown key {key!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def hash_prefix_of(file_name: str) -> str | None:
    """The sha256 prefix torch.hub reads from a file name such as resnet18-f37072fd.pth."""
    match = HASH_IN_FILE_NAME.search(file_name)
    return match.group(1) if match else None


def cache_dir() -> Path:
    """torch.hub's checkpoint folder, where torchvision keeps its downloads too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_local_source(source: str | os.PathLike) -> bool:
    """Whether a weights source names a local file (a path or a file:// URL) rather than a tag."""
    text = os.fspath(source)
    return text.startswith("file://") or Path(text).expanduser().is_file()


def local_path(source: str | os.PathLike) -> Path:
    """The filesystem path of a local path or file:// URL."""
    text = os.fspath(source)
    if text.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(text).path))
    return Path(text).expanduser()


def weights_url(record: Mapping[str, Any], base_url: str | None = None) -> str:
    """Where to download a manifest record: base_url, else $EDGEZOO_WEIGHTS_URL, else its url.

    A base is a mirror folder: an http(s) or file:// URL, or a local directory; the record's file
    name is appended to it.
    """
    base = base_url or os.environ.get(BASE_URL_ENV)
    if not base:
        return record["url"]
    if "://" not in base:
        base = Path(base).expanduser().resolve().as_uri()
    return base.rstrip("/") + "/" + record["file_name"]


def fetch_weights(
    record: Mapping[str, Any],
    *,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Return the verified cached file of a manifest record, downloading it first if needed.

    A cached file with the wrong hash (a bad copy placed by hand, a corrupt download) is moved
    aside to `<name>.bad`, saying where, and the file is downloaded again.
    """
    path = cache_path(record["file_name"])
    with contextlib.suppress(OSError):  # a read-only cache has none of ours to remove
        remove_stale_partials(path.parent, {path.name})
    expected = expected_sha256(record)
    if path.is_file():
        actual = file_sha256(path)
        if actual.startswith(expected):
            logger.debug("using cached %s", path)
            _pin_sha256(record["file_name"], actual)
            return path
        _refuse_against_pin(record, path, actual, expected)
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        logger.warning(
            "cached weights %s have sha256 %s, expected a hash starting with %s; moved the file "
            "to %s and downloading it again",
            path,
            actual,
            expected,
            bad,
        )
    url = weights_url(record, base_url)
    digest = download(url, path, expected, progress=progress, timeout=timeout)
    _pin_sha256(record["file_name"], digest)
    return path


def pinned_hashes_path() -> Path:
    """Where edgezoo keeps the full sha256 of each weights file it has verified (beside
    torch.hub's checkpoint folder, not in it)."""
    return Path(torch.hub.get_dir()) / "edgezoo_sha256.json"


def _pinned_hashes() -> dict[str, str]:
    """The pins recorded so far; WeightsError naming the file when it is not a JSON object of
    file name -> sha256 (it is never silently ignored or rewritten with the other pins lost)."""
    path = pinned_hashes_path()
    if not path.exists():
        return {}
    fix = "repair it, or delete it to pin every file again at its next use"
    try:
        pins = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"the sha256 pin file {path} cannot be read ({err}): {fix}") from err
    if not isinstance(pins, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _is_sha256(v) for k, v in pins.items()
    ):
        raise WeightsError(
            f"the sha256 pin file {path} must map weights file names to 64-digit sha256 "
            f"strings: {fix}"
        )
    return pins


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def expected_sha256(record: Mapping[str, Any]) -> str:
    """The hash a file must have: the manifest's full sha256 where it ships one, else the full
    hash recorded when the file first matched its 8-digit prefix (torchvision publishes only
    the prefix: 32 bits alone are too few to trust), else that prefix."""
    if "sha256" in record:
        return record["sha256"]
    pinned = _pinned_hashes().get(record["file_name"], "")
    return pinned if pinned.startswith(record["sha256_prefix"]) else record["sha256_prefix"]


def _refuse_against_pin(record: Mapping[str, Any], path: Path, actual: str, expected: str) -> None:
    """A cached file that matches the published prefix but not the full hash pinned earlier:
    another file than the one verified before. Say so, naming the pin file (moving the file
    aside and downloading again would meet the same pin)."""
    prefix = record.get("sha256_prefix", "")
    if "sha256" in record or expected == prefix or not actual.startswith(prefix):
        return
    raise HashMismatchError(
        f"{path} has sha256 {actual}: it matches the published prefix {prefix}, but not the "
        f"full hash {expected} pinned in {pinned_hashes_path()} when a copy was first "
        "verified, so it is another file. If you trust this copy, delete its entry "
        f"({record['file_name']}) from the pin file; else replace the file with the one pinned"
    )


def _pin_sha256(file_name: str, digest: str) -> None:
    """Record a verified file's full hash, so a later copy must match all 256 bits."""
    pins = _pinned_hashes()
    if pins.get(file_name) == digest:
        return
    pins[file_name] = digest
    path = pinned_hashes_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:
            partial.write_text(json.dumps(pins, indent=1, sort_keys=True), "utf-8")
    except OSError as err:  # a read-only cache still serves files verified by their prefix
        logger.warning(
            "%s matched its published hash, but its full sha256 could not be pinned in %s "
            "(%s); it stays verified by the published 8-digit prefix only",
            file_name,
            path,
            err.strerror or err,
        )


def cache_path(file_name: str) -> Path:
    """Where a weights file lives in the cache; refuses names that would leave the cache."""
    folder = cache_dir().resolve()
    path = (folder / file_name).resolve()
    if path.parent != folder or not file_name or file_name.startswith("."):
        raise WeightsError(
            f"weights file name {file_name!r} does not name a file inside the cache folder "
            f"{folder}; a manifest file name is a plain name such as resnet18-f37072fd.pth"
        )
    return path


def download(
    url: str,
    path: Path,
    sha256_prefix: str | None,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> str:
    """Download url to path atomically (a temp file beside it, verified, then os.replace);
    return its sha256. sha256_prefix: the hash or its beginning the file must have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, path)
    try:
        with atomic_path(path) as temp:
            with open(temp, "xb") as out:
                digest = _copy_url(url, out, progress=progress, timeout=timeout, desc=path.name)
            if sha256_prefix is not None and not digest.startswith(sha256_prefix):
                raise HashMismatchError(
                    f"{url} has sha256 {digest}, expected a hash starting with {sha256_prefix}; "
                    f"the file was not kept at {path}. Check that the mirror serves the "
                    "right file, or place a good copy there by hand"
                )
        return digest
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise DownloadError(
            f"could not download {url} ({err}). Download it by another route and place it at "
            f"{path}, or set {BASE_URL_ENV} to a mirror (URL or folder) that serves "
            f"{path.name}"
        ) from err


def _copy_url(url: str, out, *, progress: bool, timeout: float, desc: str) -> str:
    """Stream url into an open file with a progress bar; return the sha256 hex digest."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "edgezoo"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length else None
        received = 0
        with tqdm(
            total=total,
            disable=not progress,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
        ) as bar:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _unpickler_detail(err: Exception) -> str:
    """What torch's weights-only unpickler objected to, without its advice to turn the safety
    off (weights_only=False runs whatever code the file holds)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error:"):
            rest = line.removeprefix("WeightsUnpickler error:").strip()
            return rest or (lines[index + 1] if index + 1 < len(lines) else "unknown")
    return next((line for line in lines if "weights_only" not in line), type(err).__name__)


def read_checkpoint(source: str | os.PathLike) -> Any:
    """torch.load a weights file or a run's checkpoint (path or file:// URL) safely, onto the CPU.

    It reads the file (into tensors and containers); putting weights into a model is
    load_weights (any model, any source) or load_checkpoint_into (a wrapped model).

    Only tensors and plain Python containers load (weights_only): a file that holds other
    objects, which could run code when unpickled, is refused with WeightsError.
    """
    path = local_path(source)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _REFUSED_OBJECT not in str(err).upper():
            raise WeightsError(
                f"{path} is not a loadable weights file (the safe loader stopped at: "
                f"{_unpickler_detail(err)}); it must be a torch.save'd state_dict or "
                "checkpoint dict of tensors, which edgezoo loads without running code"
            ) from None
        logger.debug("torch.load(weights_only=True) refused %s: %s", path, err)
        raise WeightsError(
            f"{path} holds objects that are not tensors and is refused for safety (edgezoo "
            "loads weights only); save a state_dict of tensors: torch.save(model.state_dict(), "
            "path)"
        ) from None
    except Exception as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"{path} is not a loadable weights file ({detail}); it must be a torch.save'd "
            "state_dict or checkpoint dict of tensors (a truncated or corrupt file?)"
        ) from err
