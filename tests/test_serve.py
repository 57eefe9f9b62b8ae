"""Triton serving: repositories written from tiny bundles, served by a real tritonserver (nvidia-pytriton's,
from `make serve-env`), answered exactly as the in-process runtime answers."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgevlp.errors import BundleError, InputError, ServerError

BLIP, OWL, VLM = "BlipForConditionalGeneration", "OwlViTForObjectDetection", "SmolVLMForConditionalGeneration"
ROOT = Path(__file__).resolve().parents[1]


def _skip_or_fail(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must serve through a real tritonserver: {why} (make serve-env)")
    pytest.skip(why)


def free_base_port() -> int:
    """A port P with P, P+1 and P+2 free on 127.0.0.1 (HTTP, gRPC, metrics)."""
    for _ in range(200):
        base = random.randint(20000, 45000)
        ok = True
        for p in (base, base + 1, base + 2):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def install():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install 'edgevlp[serve]')")
    from edgevlp.serve.server import find_tritonserver

    try:
        return find_tritonserver()
    except ServerError as err:
        _skip_or_fail(str(err))


@pytest.fixture(scope="module")
def repos(exported, tmp_path_factory):
    from edgevlp.serve import write_repository
    from edgevlp.serve.repository import ServeSettings

    root = tmp_path_factory.mktemp("triton")
    out = {}
    # the VLM's batcher waits up to 0.2 s to fill a batch: concurrent questions from 8 test threads on
    # two cores arrive milliseconds apart, and with the profile's 2 ms each could find the model idle
    vlm = ServeSettings(queue_delay_us=200_000)
    for task, arch, name, settings in (("caption", BLIP, "blip", None), ("detect", OWL, "owl", None),
                                       ("vqa", VLM, "vlm", vlm)):
        write_repository(exported(arch), root / task, leaf="python", name=name, settings=settings)
        out[task] = root / task
    return out


@pytest.fixture(scope="module")
def server(install, repos, request):
    from edgevlp.serve import TritonServer

    srv = TritonServer(list(repos.values()), port=free_base_port(), install=install)
    srv.start()
    failed = request.session.testsfailed
    yield srv
    srv.stop()
    if request.session.testsfailed > failed:  # shown with the failing tests' report
        sys.stderr.write(f"\n--- tritonserver log (last lines) ---\n{srv.log_tail(80)}")


@pytest.fixture(scope="module")
def client(server):
    from edgevlp.serve import Client

    return Client(server.grpc_url)


def _metric(server, name: str, model: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {model} in the metrics")


# ------------------------------------------------------------------------------ repository (no server)
def _graph_io(graph) -> dict[str, tuple[str, list[int]]]:
    from edgevlp.serve.pbtxt import TRITON_DTYPES

    return {t.name: (TRITON_DTYPES[t.dtype], [d if isinstance(d, int) else -1 for d in t.shape[1:]])
            for t in (*graph.inputs, *graph.outputs)}


@pytest.mark.parametrize("leaf", ["python", "onnxruntime", "openvino", "tensorrt"])
def test_every_leaf_config_parses_and_names_the_graphs(leaf, exported, tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from edgevlp.bundle import read_manifest
    from edgevlp.serve import write_repository

    target = {"tensorrt": "jetson"}.get(leaf, "cpu")
    for arch in (BLIP, OWL, VLM):
        bundle = exported(arch, target)
        manifest = read_manifest(bundle)
        record = write_repository(bundle, tmp_path / f"{leaf}-{arch}", leaf=leaf)
        configs = {}
        for name in record["models"]:
            cfg = model_config_pb2.ModelConfig()
            text_format.Parse((tmp_path / f"{leaf}-{arch}" / name / "config.pbtxt").read_text(), cfg)
            assert cfg.name == name
            configs[name] = cfg
        for role, graph in manifest.graphs.items():
            cfg = configs[f"{manifest.family}_{role}"]
            dtype_name = model_config_pb2.DataType.Name
            served = {t.name: (dtype_name(t.data_type), list(t.dims)) for t in (*cfg.input, *cfg.output)}
            assert served == _graph_io(graph), (leaf, role)
            assert cfg.max_batch_size >= 1
            if leaf == "python":
                assert cfg.backend == "python"
            elif leaf == "tensorrt":
                assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
            else:
                assert cfg.backend == leaf and cfg.default_model_filename == graph.file
            files = {p.name for p in (tmp_path / f"{leaf}-{arch}" / cfg.name / "1").iterdir()}
            assert graph.file in files and set(graph.extra_files) <= files
        if leaf == "tensorrt":
            script = (tmp_path / f"{leaf}-{arch}" / "build_engines.sh").read_text()
            assert script.count("--saveEngine=") == len(manifest.graphs)
        entry = configs[record["entries"][0]["name"]]
        task = {p: v.string_value for p, v in entry.parameters.items()}["edgevlp_task"]
        assert task == manifest.task


def test_repository_refuses_bad_requests_and_is_verified(exported, tmp_path):
    from edgevlp.serve import read_repository, write_repository

    bundle = exported(OWL)
    with pytest.raises(InputError, match="--leaf tensorrt serves bundles exported for"):
        write_repository(bundle, tmp_path / "trt", leaf="tensorrt")
    with pytest.raises(InputError, match="unknown --leaf"):
        write_repository(bundle, tmp_path / "x", leaf="tflite")
    with pytest.raises(InputError, match="must start with a letter"):
        write_repository(bundle, tmp_path / "x", name="../evil")
    record = write_repository(bundle, tmp_path / "ok", leaf="python")
    assert read_repository(tmp_path / "ok")["models"] == record["models"]
    with pytest.raises(BundleError, match="not empty"):
        write_repository(bundle, tmp_path / "ok")
    onnx = tmp_path / "ok" / "owlvit_image_encoder" / "1" / "image_encoder.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="does not match its sha256"):
        read_repository(tmp_path / "ok")
    assert not list(tmp_path.glob(".*tmp*")), "a failed write must leave nothing behind"


def test_export_cli_writes_a_repository_from_a_bundle(exported, tmp_path):
    from edgevlp.cli import main

    out = tmp_path / "repo"
    assert main(["export", str(exported(BLIP)), "--target", "triton", "-o", str(out), "--no-batching",
                 "--name", "cap"]) == 0
    config = (out / "cap" / "config.pbtxt").read_text()
    assert "dynamic_batching" not in config and 'string_value: "caption"' in config
    assert main(["export", str(exported(BLIP)), "--target", "triton", "-o", str(out), "--precision",
                 "int8", "--force"]) == 1  # a bundle keeps its precision


def test_export_repository_from_a_model(tiny_model_dir, tmp_path):
    from edgevlp.export.repository import export_repository

    record = export_repository(tiny_model_dir(BLIP), tmp_path / "repo", leaf="onnxruntime", progress=False,
                               settings={"max_batch_size": 4, "queue_delay_us": 100})
    assert record["bundle"]["parity"]["greedy_tokens_identical"] and record["leaf"] == "onnxruntime"
    config = (tmp_path / "repo" / "blip" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config and "max_queue_delay_microseconds: 100" in config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"], "the temp bundle is removed"
    with pytest.raises(InputError, match="unknown serve setting"):
        export_repository(tiny_model_dir(BLIP), tmp_path / "x", settings={"turbo": True})


# ------------------------------------------------------------------------------ a real tritonserver
def test_served_captions_equal_the_runtime(server, client, exported, photos_bgr):
    from edgevlp.runtime import load

    local = load(exported(BLIP))
    frames = [photos_bgr["astronaut"], photos_bgr["coffee"]]
    mine = [local.caption(f).token_ids for f in frames]
    assert mine[0] != mine[1], "the tiny captioner must depend on its input for this test to mean anything"
    assert client.models()["caption"] == "blip"
    for frame, tokens in zip(frames, mine):
        got = client.caption(frame)
        assert got.token_ids == tokens and got.text == local.caption(frame).text
        assert client.caption(frame, max_new_tokens=3).token_ids == local.caption(frame, max_new_tokens=3).token_ids


def test_served_detections_equal_the_runtime(server, client, exported, photos_bgr):
    from edgevlp.runtime import load

    local = load(exported(OWL))
    frame = photos_bgr["astronaut"]
    results = []
    for prompts in (["a red circle", "a person"], ["a cup", "a rocket", "a blue square"]):
        local.set_prompts(prompts)
        want = local.detect(frame, threshold=0.0)
        got = client.detect(frame, prompts, threshold=0.0)
        assert len(want) > 0
        np.testing.assert_array_equal(got.boxes_xyxy, want.boxes_xyxy)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.labels, want.labels)
        results.append(want.scores)
    assert results[0].shape != results[1].shape or not np.array_equal(results[0], results[1])
    remote = client.detector()  # the runtime Detector's interface
    remote.set_prompts(["a person"])
    local.set_prompts(["a person"])
    np.testing.assert_array_equal(remote.detect(frame, 0.0).scores, local.detect(frame, 0.0).scores)


def test_served_answers_equal_the_runtime(server, client, exported, photos_bgr):
    from edgevlp.runtime import load

    local = load(exported(VLM))
    frames = [photos_bgr["astronaut"], photos_bgr["coffee"]]
    asked = {}
    for i, frame in enumerate(frames):
        for question in ("what is in the image?", "how many cups are there?", None):
            want = local.ask(frame, question, max_new_tokens=8)
            got = client.ask(frame, question, max_new_tokens=8)
            assert got.token_ids == want.token_ids and got.text == want.text
            asked[i, question] = tuple(want.token_ids)
    assert len(set(asked.values())) > 1, "the tiny VLM must depend on its input for this test to mean anything"
    assert client.assistant().ask(frames[0], "what is in the image?", max_new_tokens=8).token_ids == \
        list(asked[0, "what is in the image?"])
    import tritonclient.grpc as grpcclient

    image = grpcclient.InferInput("IMAGE", [1, *frames[0].shape], "UINT8")
    image.set_data_from_numpy(frames[0][None])
    bad = grpcclient.InferInput("QUESTION", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"\xff\xfe?"]], dtype=object))
    with pytest.raises(ServerError, match="not valid UTF-8"):
        client.infer("vlm", [image, bad], ["TEXT"])


def test_concurrent_clients_are_batched(server, photos_bgr):
    from edgevlp.serve import Client

    frame = photos_bgr["coffee"]
    before = (_metric(server, "nv_inference_count", "blip_vision_encoder"),
              _metric(server, "nv_inference_exec_count", "blip_vision_encoder"))
    errors: list[BaseException] = []

    def one(client, start: threading.Barrier) -> None:  # type: ignore[no-untyped-def]
        try:
            start.wait()
            client.caption(frame, max_new_tokens=4)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    for _ in range(3):
        clients, start = [Client(server.grpc_url) for _ in range(8)], threading.Barrier(8)
        threads = [threading.Thread(target=one, args=(c, start)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    count = _metric(server, "nv_inference_count", "blip_vision_encoder") - before[0]
    execs = _metric(server, "nv_inference_exec_count", "blip_vision_encoder") - before[1]
    assert count == 24 and execs < count, (count, execs)


def test_concurrent_questions_are_batched_and_answer_as_alone(server, exported, photos_bgr):
    """VQA requests of one dynamic batch (different frames, questions and budgets) share one prefill
    and decode loop in the BLS model, and each gets the tokens the in-process runtime gives it alone;
    a request whose budget passes the context fails alone."""
    from edgevlp.runtime import load
    from edgevlp.serve import Client

    local = load(exported(VLM))
    asks = [(photo, question, budget) for photo in ("astronaut", "coffee")
            for question, budget in (("what is in the image?", 8), ("how many cups are there on the table?", 3),
                                     (None, 6), ("is it red?", 8))]
    want = [local.ask(photos_bgr[p], q, max_new_tokens=n).token_ids for p, q, n in asks]
    assert len({tuple(w) for w in want}) > 2, "the tiny VLM must depend on its input for this test to mean anything"
    before = (_metric(server, "nv_inference_count", "vlm"), _metric(server, "nv_inference_exec_count", "vlm"))
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    # connected first and released together: requests that trickle in while each connects would each
    # find the model idle and run alone
    clients = [Client(server.grpc_url) for _ in asks]
    start = threading.Barrier(len(asks))

    def one(k: int) -> None:
        photo, question, budget = asks[k]
        try:
            start.wait()
            got[k] = clients[k].ask(photos_bgr[photo], question, max_new_tokens=budget).token_ids
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [got[k] for k in range(len(asks))] == want
    count = _metric(server, "nv_inference_count", "vlm") - before[0]
    execs = _metric(server, "nv_inference_exec_count", "vlm") - before[1]
    assert count == len(asks) and execs < count, (count, execs)
    with pytest.raises(ServerError, match="MAX_NEW_TOKENS must be in 1.."):
        Client(server.grpc_url).ask(photos_bgr["coffee"], "what?", max_new_tokens=0)
    with pytest.raises(ServerError, match="pass the model's context"):  # in range, but not after its prompt
        Client(server.grpc_url).ask(photos_bgr["coffee"], "what?", max_new_tokens=int(local.generation["max_length"]) - 1)


def test_bad_requests_get_errors_and_the_server_stays_up(server, client, photos_bgr):
    import tritonclient.grpc as grpcclient

    frame = photos_bgr["coffee"]

    def send(model: str, inputs: list, why: str) -> None:
        with pytest.raises(ServerError, match=why):
            client.infer(model, inputs, ["BOXES"] if model == "owl" else ["TEXT"])

    def tensor(name, value, dtype):
        t = grpcclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        return t

    prompts = lambda items: tensor("PROMPTS", np.array([items], dtype=object), "BYTES")  # noqa: E731
    threshold = tensor("THRESHOLD", np.array([[0.1]], np.float32), "FP32")
    image = tensor("IMAGE", frame[None], "UINT8")
    empty, tall = np.zeros((1, 0, 0, 3), np.uint8), np.zeros((1, 9000, 2, 3), np.uint8)
    send("blip", [tensor("IMAGE", frame[None].astype(np.float32), "FP32")], "FP32|UINT8")  # wrong dtype
    send("blip", [tensor("IMAGE", empty, "UINT8")], "empty")                           # empty image
    send("blip", [tensor("IMAGE", tall, "UINT8")], "largest side")                     # too large a side
    with pytest.raises(InputError, match="empty"):  # the client refuses it before sending
        client.detect(np.zeros((0, 0, 3), np.uint8), ["cup"])
    # the detector ensemble: a bad image, bad prompts or both, each refused while the other branch runs
    send("owl", [tensor("IMAGE", empty, "UINT8"), prompts([b"cup"]), threshold], "empty")
    send("owl", [tensor("IMAGE", tall, "UINT8"), prompts([b"cup"]), threshold], "largest side")
    send("owl", [image, prompts([b"x"] * 1000), threshold], "1000 prompts")
    send("owl", [image, prompts([b"\xff\xfe bad"]), threshold], "not valid UTF-8")
    send("owl", [tensor("IMAGE", empty, "UINT8"), prompts([b"\xff"]), threshold], "empty")
    send("owl", [image, prompts([b"cup"]), tensor("THRESHOLD", np.array([[np.nan]], np.float32), "FP32")],
         "THRESHOLD")
    # a 20000 x 20000 image header with 12 bytes behind it, straight to the HTTP endpoint
    header = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 20000, 20000, 3], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 12}}]}).encode()
    req = urllib.request.Request(f"{server.http_url}/v2/models/blip/infer", data=header + b"\0" * 12,
                                 headers={"Inference-Header-Content-Length": str(len(header)),
                                          "Content-Type": "application/octet-stream"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    assert server.ready() and server.process.poll() is None
    assert client.caption(frame).token_ids  # still serving
    assert len(client.detect(frame, ["cup"], threshold=0.0)) >= 0


def test_client_errors_are_clear(server, client):
    from edgevlp.serve import Client
    from edgevlp.serve.client import parse_server_url

    with pytest.raises(InputError, match="grpc://HOST:PORT"):
        parse_server_url("ftp://x:1")
    with pytest.raises(ServerError, match="is the server running"):
        Client(f"grpc://127.0.0.1:{free_base_port()}", timeout=2).models()
    with pytest.raises(InputError, match="BGR uint8"):
        client.caption(np.zeros((4, 4), np.uint8))
    with pytest.raises(ServerError, match="serves no segment model"):
        client.model_for("segment")


def test_serve_cli_starts_serves_and_stops_on_sigterm(install, repos, photos_bgr, tmp_path):
    from edgevlp.serve import Client

    port = free_base_port()
    env = {**os.environ, "EDGEVLP_SERVE_PYTHON": str(install.python or "")}
    proc = subprocess.Popen([sys.executable, "-m", "edgevlp", "serve", str(repos["caption"]), "--port", str(port),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("serving:") or proc.poll() is not None:
                break
        assert lines[-1].startswith("serving:"), "".join(lines) + proc.stderr.read()
        assert f"grpc://127.0.0.1:{port + 1}" in lines[-1]
        assert Client(f"grpc://127.0.0.1:{port + 1}").caption(photos_bgr["coffee"]).token_ids
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    for p in (port, port + 1, port + 2):  # everything released
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))


def test_serve_cli_refuses_a_tampered_repository(repos, tmp_path):
    import shutil

    from edgevlp.cli import main

    copy = tmp_path / "repo"
    shutil.copytree(repos["detect"], copy)
    (copy / "owl" / "1" / "bundle" / "tokenizer.json").write_text("{}")
    assert main(["serve", str(copy)]) == 1


@pytest.fixture(scope="module")
def clip(tmp_path_factory, photos_bgr):
    import cv2

    path = tmp_path_factory.mktemp("clip") / "cam.mp4"
    frame = cv2.resize(photos_bgr["astronaut"], (160, 120))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for i in range(12):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()
    return path


def test_run_as_a_client_of_several_sources(server, clip, exported, tmp_path):
    from edgevlp.cli import main
    from edgevlp.runtime import load

    out = tmp_path / "run"
    assert main(["run", "--server", server.grpc_url, "--source", str(clip), "--source", str(clip), "--prompts",
                 "a person, a cup", "--threshold", "0.0", "--headless", "--output", str(out)]) == 0
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == ["0-cam", "1-cam"]
    detector = load(exported(OWL))
    detector.set_prompts(["a person", "a cup"])
    import cv2

    cap = cv2.VideoCapture(str(clip))
    ok, first = cap.read()
    want = detector.detect(first, threshold=0.0)
    for d in dirs:
        lines = [json.loads(line) for line in (out / d / "log.jsonl").read_text().splitlines()]
        assert len(lines) == 12 and lines[0]["caption"]
        assert [x["score"] for x in lines[0]["detections"]] == pytest.approx(want.scores.tolist(), abs=6e-5)  # the log keeps 4 decimals
        summary = json.loads((out / d / "summary.json").read_text())
        assert summary["frames"] == 12 and "triton" in summary["models"]["detector"]["backend"]
    # the app's own validation still holds
    assert main(["run", str(exported(OWL)), "--server", server.grpc_url, "--source", str(clip)]) == 1
    assert main(["run", "--server", server.grpc_url, "--source", str(clip), "--source", str(clip),
                 "--prompts", "cup"]) == 1  # several sources need --headless
    assert main(["run", str(exported(OWL)), "--source", str(clip), "--source", str(clip), "--prompts", "cup",
                 "--headless"]) == 1  # several sources need a server


def test_bench_server_load_test(server, capsys):
    from edgevlp.bench.serve import load_test, max_streams
    from edgevlp.cli import main

    rows = load_test(server.grpc_url, (1, 3), seconds=1.5, caption_streams=1, caption_every=1.0)
    assert [r.streams for r in rows] == [1, 3]
    for r in rows:
        assert r.errors == 0 and r.detect_done + r.dropped == r.detect_offered > 0
        assert r.caption_done >= 1 and r.batch >= 1.0 and r.compute_ms > 0
    assert max_streams(rows) in (0, 1, 3)
    assert main(["bench", "--server", server.grpc_url, "--streams", "2", "--seconds", "1"]) == 0
    assert "max streams" in capsys.readouterr().out
    assert main(["bench", "--server", server.grpc_url, "--streams", "two"]) == 1
