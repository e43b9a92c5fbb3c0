"""Download, verification, cache and offline use of weights, against a local HTTP server."""

import copy
import errno
import hashlib
import io
import json
import logging
import os
import pickle
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision

from edgezoo import hub
from edgezoo.errors import DownloadError, HashMismatchError, WeightsError
from edgezoo.registry import get_model

MIRROR = "/mirror/"


def _checkpoint(model: torch.nn.Module, name: str) -> tuple[str, bytes]:
    """torchvision-format bytes and the file name torch.hub expects (name-<sha256[:8]>.pth)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    return f"{name}-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


class _Server:
    """A 127.0.0.1 HTTP server with a dict of files and a log of the paths requested."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # A truncated reply promises the whole file and sends half: a dropped connection.
                self.wfile.write(data[: len(data) // 2] if self.path in server.truncated else data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}{MIRROR}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def resnet18_tv() -> torchvision.models.ResNet:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def resnet18_file(resnet18_tv) -> tuple[str, bytes]:
    return _checkpoint(resnet18_tv, "resnet18")


@pytest.fixture(scope="module")
def mobilenet_v2_tv() -> torchvision.models.MobileNetV2:
    torch.manual_seed(1)
    return torchvision.models.mobilenet_v2().eval()


@pytest.fixture(scope="module")
def mobilenet_v2_file(mobilenet_v2_tv) -> tuple[str, bytes]:
    return _checkpoint(mobilenet_v2_tv, "mobilenet_v2")


@pytest.fixture(scope="module")
def server():
    server = _Server()
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path, monkeypatch, server, resnet18_file, mobilenet_v2_file) -> Path:
    """A private torch.hub cache, a manifest naming the test checkpoints, a fresh server log."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(hub.BASE_URL_ENV, raising=False)
    manifest = copy.deepcopy(hub.load_manifest())
    for model, tag, (file_name, _) in (
        ("resnet18", "IMAGENET1K_V1", resnet18_file),
        ("mobilenetv2", "IMAGENET1K_V1", mobilenet_v2_file),
    ):
        record = manifest["models"][model]["weights"][tag]
        record["url"] = f"https://download.pytorch.org/models/{file_name}"
        record["file_name"] = file_name
        record["sha256_prefix"] = hub.hash_prefix_of(file_name)
    assert hub.validate_manifest(manifest) == []
    monkeypatch.setattr(hub, "load_manifest", lambda: manifest)
    server.files = {MIRROR + name: data for name, data in (resnet18_file, mobilenet_v2_file)}
    server.truncated = set()
    server.requests.clear()
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_same_outputs(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=1e-5)


def test_download_verifies_caches_and_reuses(
    cache, server, monkeypatch, resnet18_tv, resnet18_file
):
    monkeypatch.setenv(hub.BASE_URL_ENV, server.base_url)
    model = get_model("resnet18", pretrained=True, progress=False)
    assert server.requests == [MIRROR + resnet18_file[0]]
    assert _files(cache) == [resnet18_file[0]]
    assert (cache / resnet18_file[0]).read_bytes() == resnet18_file[1]
    _assert_same_outputs(model, resnet18_tv)

    again = get_model("resnet18", pretrained="imagenet1k_v1", progress=False)
    assert len(server.requests) == 1, "the cached file must be reused"
    _assert_same_outputs(again, resnet18_tv)


def test_base_url_argument_overrides_environment(cache, server, monkeypatch, resnet18_file):
    monkeypatch.setenv(hub.BASE_URL_ENV, "http://127.0.0.1:9/never-used/")
    get_model("resnet18", pretrained=True, weights_url=server.base_url.rstrip("/"), progress=False)
    assert server.requests == [MIRROR + resnet18_file[0]]


def test_corrupted_download_is_refused_and_removed(cache, server, resnet18_file):
    name, data = resnet18_file
    server.files[MIRROR + name] = data[:-1] + bytes([data[-1] ^ 0xFF])
    with pytest.raises(HashMismatchError) as info:
        get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    actual = hashlib.sha256(server.files[MIRROR + name]).hexdigest()
    message = str(info.value)
    assert hub.hash_prefix_of(name) in message and actual in message
    assert str(cache / name) in message
    assert _files(cache) == [], "no bad file and no temp file may stay behind"


def test_wrong_expected_hash_is_refused(cache, server, resnet18_file):
    name, _ = resnet18_file
    record = {"url": f"https://example.invalid/{name}", "file_name": name}
    with pytest.raises(HashMismatchError, match="0123abcd"):
        hub.fetch_weights(
            {**record, "sha256_prefix": "0123abcd"}, base_url=server.base_url, progress=False
        )
    assert _files(cache) == []


def test_a_bad_cached_file_is_moved_aside_and_downloaded_again(
    cache, server, resnet18_file, caplog
):
    # A copy placed in the cache by hand with the wrong content is kept as <name>.bad, the
    # warning says where, and the same call downloads the right file from the mirror.
    name, data = resnet18_file
    cache.mkdir(parents=True)
    (cache / name).write_bytes(data[: len(data) // 2])
    get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    assert (cache / name).read_bytes() == data
    assert (cache / f"{name}.bad").read_bytes() == data[: len(data) // 2]
    assert f"moved the file to {cache / name}.bad and downloading it again" in caplog.text
    assert _files(cache) == [name, f"{name}.bad"]


def test_a_bad_cached_file_is_kept_aside_when_the_download_fails(cache, server, resnet18_file):
    name, _ = resnet18_file
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b"hand-made copy")
    server.files.clear()
    with pytest.raises(DownloadError, match="404"):
        get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    assert _files(cache) == [f"{name}.bad"] and (cache / f"{name}.bad").read_bytes() == (
        b"hand-made copy"
    )


def test_cache_paths_never_leave_the_cache(cache, server, resnet18_file, tmp_path):
    name, _ = resnet18_file
    record = {
        "url": f"https://example.invalid/{name}",
        "file_name": f"../../{name}",
        "sha256_prefix": hub.hash_prefix_of(name),
    }
    with pytest.raises(WeightsError, match="inside the cache folder"):
        hub.fetch_weights(record, base_url=server.base_url, progress=False)
    assert not any(tmp_path.glob(f"**/{name}")) and server.requests == []


def test_stale_partial_downloads_are_removed_on_the_next_fetch(cache, server, resnet18_file):
    name, _ = resnet18_file
    cache.mkdir(parents=True)
    dead = cache / f".{name}.999999.{'a' * 32}.partial"  # pid 999999: no such process
    alive = cache / f".{name}.{os.getpid()}.{'b' * 32}.partial"  # this process: still writing
    dead.write_bytes(b"x")
    alive.write_bytes(b"y")
    get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    assert not dead.exists() and alive.exists()


def test_a_pickle_that_holds_code_is_refused_in_plain_words(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "evil.pth"
    torch.save({"weights": RunsCode()}, path)
    with pytest.raises(WeightsError) as info:
        get_model("resnet18", pretrained=path)
    message = str(info.value)
    assert "holds objects that are not tensors and is refused for safety" in message
    assert "weights_only" not in message and "\n" not in message


def test_dropped_connection_leaves_no_partial_file(cache, server, resnet18_file):
    server.truncated.add(MIRROR + resnet18_file[0])
    with pytest.raises(DownloadError):
        get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    assert _files(cache) == []


def test_unreachable_server_names_url_cache_path_and_mirror_variable(cache, resnet18_file):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}/weights"
    with pytest.raises(DownloadError) as info:
        get_model("resnet18", pretrained=True, weights_url=base, progress=False)
    message = str(info.value)
    assert f"{base}/{resnet18_file[0]}" in message
    assert str(cache / resnet18_file[0]) in message
    assert hub.BASE_URL_ENV in message
    assert _files(cache) == []


def test_missing_file_on_mirror_is_a_download_error(cache, server, resnet18_file):
    server.files.clear()
    with pytest.raises(DownloadError, match="404"):
        get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)


def test_local_path_and_file_url_work_offline(cache, server, tmp_path, resnet18_tv, resnet18_file):
    path = tmp_path / "mine.pth"
    path.write_bytes(resnet18_file[1])
    for source in (str(path), path, path.as_uri()):
        _assert_same_outputs(get_model("resnet18", pretrained=source), resnet18_tv)
    assert server.requests == [] and _files(cache) == []


def test_mirror_folder_fills_the_cache(cache, server, monkeypatch, tmp_path, resnet18_file):
    folder = tmp_path / "air_gapped"
    folder.mkdir()
    (folder / resnet18_file[0]).write_bytes(resnet18_file[1])
    monkeypatch.setenv(hub.BASE_URL_ENV, str(folder))
    get_model("resnet18", pretrained=True, progress=False)
    assert server.requests == [] and _files(cache) == [resnet18_file[0]]


def test_file_placed_in_cache_by_hand_is_used(cache, server, resnet18_tv, resnet18_file):
    cache.mkdir(parents=True)
    (cache / resnet18_file[0]).write_bytes(resnet18_file[1])
    _assert_same_outputs(get_model("resnet18", pretrained=True, progress=False), resnet18_tv)
    assert server.requests == []


def test_other_num_classes_loads_all_but_the_head(cache, server, caplog, resnet18_tv):
    with caplog.at_level(logging.WARNING, logger="edgezoo.registry"):
        model = get_model(
            "resnet18", pretrained=True, num_classes=10, weights_url=server.base_url, progress=False
        )
    assert model.fc.out_features == 10
    reference = resnet18_tv.state_dict()
    for key, tensor in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(tensor, reference[key]), key
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "fc.weight" in warning and "fc.bias" in warning and "layer" not in warning


def test_num_classes_follows_a_local_checkpoint(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.mobilenet_v2(num_classes=7).eval()
    path = tmp_path / "finetuned.pth"
    ddp_keys = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 3, "model": ddp_keys}, path)
    model = get_model("mobilenet_v2", pretrained=path)
    assert model.classifier[1].out_features == 7
    _assert_same_outputs(model, reference)


def test_deeplab_backbone_gets_torchvision_imagenet_weights(cache, server, mobilenet_v2_tv):
    model = get_model(
        "deeplabv3plus_mnv2", pretrained_backbone=True, weights_url=server.base_url, progress=False
    )
    reference = mobilenet_v2_tv.state_dict()
    backbone = model.backbone.state_dict()
    assert backbone and all(torch.equal(t, reference[k]) for k, t in backbone.items())
    assert len(server.requests) == 1

    with pytest.raises(WeightsError, match="pretrained_backbone=True"):
        get_model("deeplabv3plus_mobilenetv2", pretrained=True)


def test_the_full_hash_is_pinned_on_first_verify_and_every_later_copy_must_match_it(
    cache, server, resnet18_file
):
    name, data = resnet18_file
    get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    pins = json.loads(hub.pinned_hashes_path().read_text())
    assert pins == {name: hashlib.sha256(data).hexdigest()}
    assert _files(cache) == [name], "the pins live beside torch.hub's cache, not in it"
    # A copy that matches the 8-digit prefix but not the recorded 256 bits is refused, naming
    # the pin file and what to do; the copy is left where it is (a download would meet the
    # same pin).
    forged = pins[name][:8] + "0" * 56
    hub.pinned_hashes_path().write_text(json.dumps({name: forged}))
    pattern = f"not the full hash {forged} pinned in .*edgezoo_sha256.json.*delete its entry"
    with pytest.raises(HashMismatchError, match=pattern):
        get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    assert (cache / name).read_bytes() == data and not (cache / f"{name}.bad").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "cannot be read"),
        ('{"resnet18.pth": 5}', "64-digit sha256 strings"),
        ("[1, 2]", "64-digit sha256 strings"),
        (None, "cannot be read"),  # a directory in its place
    ],
)
def test_a_broken_pin_file_is_named_never_ignored_or_rewritten(cache, server, content, problem):
    pins = hub.pinned_hashes_path()
    pins.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        pins.mkdir()
    else:
        pins.write_text(content)
    with pytest.raises(WeightsError, match=f"pin file .*edgezoo_sha256.json.*{problem}"):
        get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    assert pins.is_dir() if content is None else pins.read_text() == content


def test_a_read_only_cache_serves_a_verified_file_it_cannot_pin(
    cache, server, resnet18_file, monkeypatch, caplog
):
    name, _ = resnet18_file
    get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    hub.pinned_hashes_path().unlink()

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(hub, "atomic_path", read_only)
    with caplog.at_level("WARNING", logger="edgezoo.hub"):
        model = get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    assert model is not None and not hub.pinned_hashes_path().exists()
    assert f"{name} matched its published hash, but its full sha256 could not be pinned" in (
        caplog.text
    )


def test_a_full_hash_in_the_manifest_is_checked_in_full(cache, server):
    record = hub.load_manifest()["models"]["resnet18"]["weights"]["IMAGENET1K_V1"]
    record["sha256"] = record["sha256_prefix"] + "f" * 56
    assert hub.validate_manifest(hub.load_manifest()) == []
    with pytest.raises(HashMismatchError, match="f" * 56):
        get_model("resnet18", pretrained=True, weights_url=server.base_url, progress=False)
    record["sha256"] = "0" * 64
    assert any(
        "sha256 must be the full hash" in p for p in hub.validate_manifest(hub.load_manifest())
    )


def test_a_plain_pickle_is_refused_without_torchs_advice_to_turn_safety_off(tmp_path):
    path = tmp_path / "legacy.pkl"
    path.write_bytes(pickle.dumps({"a": 1, "b": {1, 2}}, protocol=4))
    with pytest.raises(WeightsError) as info:
        get_model("resnet18", pretrained=path)
    message = str(info.value)
    assert "is not a loadable weights file (the safe loader stopped at:" in message
    assert "weights_only" not in message and "Re-running" not in message


def test_cached_weights_are_found_for_a_model_with_full_and_backbone_weights(tmp_path, monkeypatch):
    from edgezoo.engine.setup import cached_pretrained
    from edgezoo.registry import model_info

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub.cache_dir().mkdir(parents=True)
    info = model_info("fcn_resnet50")
    backbone = model_info("resnet50")["weights"]["IMAGENET1K_V1"]["file_name"]
    assert cached_pretrained("fcn_resnet50") is None
    (hub.cache_dir() / backbone).write_bytes(b"")
    assert cached_pretrained("fcn_resnet50") == "backbone"
    (hub.cache_dir() / info["weights"]["COCO_WITH_VOC_LABELS_V1"]["file_name"]).write_bytes(b"")
    assert cached_pretrained("fcn_resnet50") == "full"
