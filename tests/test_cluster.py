"""``advquery protect`` and ``index build`` on Ray, protect in shards: the same files, reports and resume rule as
the serial path.

Real UKBench photos (at a quarter of their size) and a broken file (300 Oxford photos for an IVF-PQ index), a
tiny working size, real Ray: a local instance the command starts itself, and a simulated two-node cluster
(``ray.cluster_utils.Cluster``, one CPU per node) that the command reaches by its address. Commands on Ray run as
separate processes, as a user runs them, so that their workers can be killed and the command itself stopped.
Outputs are compared byte for byte with those of the serial path at the same seed and thread count. Where Ray cannot start, the tests that
need it are skipped (the cluster fixture says why).
"""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advquery.cli.main import build_parser
from advquery.cluster import ray_target
from advquery.io import OUTPUT_RECORDS, read_photo, write_photo_atomic
from helpers import leftovers, run_cli

N_PHOTOS = 4
QUICK = ["--size", "64", "--steps", "2", "--seed", "0", "--method", "cv-pire", "--threads", "1"]  # no views: quick
INDEX_QUICK = ["--size", "64", "--threads", "1"]
BROKEN = "broken.png"
TASK_TITLE = b"ray::_run_task"  # the process title of a Ray worker while it runs a photo


@pytest.fixture(scope="module")
def photos(ukbench_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(N_PHOTOS):
        rgb = read_photo(ukbench_dir / f"ukbench{4 * i:05d}.jpg").rgb[::4, ::4].copy()  # 160 x 120
        write_photo_atomic(folder / f"p{i}.jpg", rgb, quality=95)
    (folder / BROKEN).write_bytes(b"not a photo")
    return folder


@pytest.fixture(scope="module")
def serial(photos, tmp_path_factory) -> dict:
    return _serial(photos, tmp_path_factory.mktemp("serial"))


def _serial(photos: Path, folder: Path, *options: str) -> dict:
    """The serial path's outputs (bytes by name) and report lines for the photos."""
    out, report = folder / "out", folder / "report.jsonl"
    code, _, stderr = run_cli(["protect", str(photos), "-o", str(out), "--report", str(report), *QUICK, *options])
    assert code == 1 and "failed 1" in stderr, stderr
    return {"outputs": _contents(out), "report": _lines(report, out), "inputs": _contents(photos)}


@pytest.fixture(scope="session")
def two_nodes():
    """A simulated cluster of two Ray nodes of one CPU each: ``--ray`` is given its head's address, or its Ray
    Client address ``client_address``."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'advquery[cluster]')")
    from ray.cluster_utils import Cluster

    with socket.socket() as s:  # a free port for the head's Ray Client server (ray://)
        s.bind(("127.0.0.1", 0))
        client_port = s.getsockname()[1]
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                "ray_client_server_port": client_port})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    except Exception as exc:  # noqa: BLE001 -- whatever keeps Ray from starting here is the reason to skip
        print(f"Ray cannot start here: {exc}")
        pytest.skip(f"Ray cannot start here: {exc}")
    cluster.client_address = f"ray://127.0.0.1:{client_port}"
    yield cluster
    cluster.shutdown()


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}


def _lines(report: Path, out: Path) -> list[dict]:
    """Report lines without the time taken, outputs named relative to their folder."""
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
        if line["output"]:
            line["output"] = os.path.relpath(line["output"], out)
    return lines


def _protect(photos: Path, out: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advquery.cli.main", "protect", str(photos), "-o", str(out),
                             "--report", str(out.parent / "report.jsonl"), *QUICK, *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    assert "Traceback" not in stderr, stderr
    return process.returncode, stderr


def _check_like_serial(serial: dict, photos: Path, out: Path, code: int, stderr: str) -> None:
    """The batch ended as the serial one: same bytes, one error line for the broken file, exit 1, a record
    per output, the inputs untouched, nothing left behind."""
    assert code == 1, stderr
    assert [line for line in stderr.splitlines() if "error" in line] == \
        [f"advquery: error: {photos / BROKEN}: not an image file, or an unsupported image format"], stderr
    assert _contents(out) == serial["outputs"]
    assert len(list((out / OUTPUT_RECORDS).glob("*.json"))) == N_PHOTOS
    assert _contents(photos) == serial["inputs"]
    assert leftovers(out) == []


def test_local_ray_instance_protects_like_the_serial_path(photos, serial, two_nodes, tmp_path):  # Ray starts here
    out = tmp_path / "out"
    code, stderr = _finish(_protect(photos, out, "--workers", "2"))
    _check_like_serial(serial, photos, out, code, stderr)
    assert _lines(tmp_path / "report.jsonl", out) == serial["report"]


def test_two_node_cluster_protects_like_the_serial_path(photos, serial, two_nodes, tmp_path):
    out = tmp_path / "out"
    code, stderr = _finish(_protect(photos, out, "--ray", two_nodes.address))
    _check_like_serial(serial, photos, out, code, stderr)
    assert _lines(tmp_path / "report.jsonl", out) == serial["report"]


def _task_workers() -> list[int]:
    """PIDs of Ray workers running a task of this module's commands now."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(TASK_TITLE):
                pids.append(int(entry.name))
        except OSError:
            pass  # a process that ended meanwhile
    return pids


def test_worker_killed_mid_photo_is_retried_and_the_batch_completes(photos, serial, two_nodes, tmp_path):
    out = tmp_path / "out"
    process = _protect(photos, out, "--ray", two_nodes.address)
    deadline, killed = time.monotonic() + 120, None
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        for pid in _task_workers():
            os.kill(pid, signal.SIGKILL)
            killed = pid
            break
        time.sleep(0.01)
    code, stderr = _finish(process)
    assert killed is not None, "no worker was seen running a photo"
    _check_like_serial(serial, photos, out, code, stderr)
    assert _lines(tmp_path / "report.jsonl", out) == serial["report"]


def _recorded(out: Path) -> bool:
    """Whether a photo's output is recorded whole (a pending record is written before the output)."""
    for path in (out / OUTPUT_RECORDS).glob("*.json"):
        try:
            if json.loads(path.read_text()).get("pending") is not True:
                return True
        except (OSError, ValueError):
            pass  # replaced meanwhile
    return False


def test_stopped_batch_resumes_from_what_is_written(photos, two_nodes, tmp_path):
    # Photos slow enough (seconds each) that those started after the first two are still at work when it is stopped.
    slower = ("--size", "256", "--steps", "40")
    serial = _serial(photos, tmp_path / "serial", *slower)
    out = tmp_path / "out"
    process = _protect(photos, out, "--ray", two_nodes.address, *slower)
    # The wait ends at the first recorded photo; the deadline only bounds a hang (Ray's workers start slowly on a
    # loaded machine).
    deadline = time.monotonic() + 600
    while not _recorded(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # a photo is done: its output and its whole record are written
    assert _recorded(out), "no photo was recorded before the stop"
    process.send_signal(signal.SIGTERM)
    code, stderr = _finish(process)
    assert code == 128 + signal.SIGTERM and "interrupted after" in stderr, (code, stderr)
    done = set(_contents(out))
    assert done and done < set(serial["outputs"])
    assert leftovers(out) == []
    first = (tmp_path / "report.jsonl").read_text().splitlines()
    (tmp_path / "report.jsonl").unlink()

    code, stderr = _finish(_protect(photos, out, "--ray", two_nodes.address, *slower))
    _check_like_serial(serial, photos, out, code, stderr)
    again = {line["input"]: line for line in _lines(tmp_path / "report.jsonl", out)}
    assert {Path(name).name for name, line in again.items() if line["status"] == "skipped"} == done
    assert all(json.loads(line)["status"] == "protected" for line in first
               if json.loads(line)["input"] != str(photos / BROKEN))


@pytest.fixture(scope="module")
def serial_index(photos, tmp_path_factory) -> dict[str, bytes]:
    """The files of the index the serial path builds of the photos."""
    out = tmp_path_factory.mktemp("serial_index") / "index"
    code, _, stderr = run_cli(["index", "build", str(photos), "-o", str(out), *INDEX_QUICK])
    assert code == 1 and "skipped 1" in stderr, stderr
    return _contents(out)


def _index(inputs: list[Path], out: Path, *options: str) -> tuple[int, str]:
    process = subprocess.run([sys.executable, "-m", "advquery.cli.main", "index", "build", *map(str, inputs), "-o",
                              str(out), *INDEX_QUICK, *options], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in process.stderr, process.stderr
    return process.returncode, process.stderr


def _client_server_logs(cluster) -> str:
    """The head's Ray Client server logs, so that a failure says why Ray could not serve the client."""
    logs = Path(cluster.head_node.get_logs_dir_path())
    return "".join(f"\n--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}"
                   for p in sorted(logs.glob("ray_client_server*.err")))


@pytest.mark.parametrize("where", ["local", "two nodes through Ray Client"])
def test_index_built_on_ray_is_the_serial_paths(photos, serial_index, two_nodes, tmp_path, where):
    out = tmp_path / "index"
    code, stderr = _index([photos], out,
                          *(["--ray"] if where == "local" else ["--ray", two_nodes.client_address]))
    assert code == 1, stderr + _client_server_logs(two_nodes)
    assert [line for line in stderr.splitlines() if "error" in line] == \
        [f"advquery: error: skipped {photos / BROKEN}: not an image file, or an unsupported image format"]
    assert _contents(out) == serial_index and set(serial_index) == {"descriptors.npy", "images.jsonl", "manifest.json"}


def test_ivfpq_index_filled_in_shards_on_ray_is_the_serial_one(data_root, two_nodes, tmp_path):
    # The driver trains the index, a Ray task on each node fills a copy with its half of the rows, the driver
    # merges the two: each row gets the list and code one process adding every row gives it, so the same files.
    photos = sorted((data_root / "roxford5k-mini" / "jpg").glob("*.jpg"))[:300]  # the fewest IVF-PQ trains on
    ivfpq = ["--index-type", "ivfpq", "--nlist", "4"]
    code, _, stderr = run_cli(["index", "build", *map(str, photos), "-o", str(tmp_path / "serial"), *INDEX_QUICK,
                               *ivfpq])
    assert code == 0 and "filled in" not in stderr, stderr
    code, stderr = _index(photos, tmp_path / "ray", "--ray", two_nodes.address, *ivfpq)
    assert code == 0 and "(IVF-PQ: 4 lists, 80 bytes per image, trained on 300, filled in 2 shards on Ray)" in stderr, \
        stderr
    assert _contents(tmp_path / "ray") == _contents(tmp_path / "serial")
    assert set(_contents(tmp_path / "ray")) == {"descriptors.npy", "images.jsonl", "manifest.json", "ivfpq.faiss"}


def test_index_of_sift_he_on_ray_needs_a_vocabulary(tmp_path):
    code, _, stderr = run_cli(["index", "build", str(tmp_path), "-o", str(tmp_path / "index"), "--features", "sift-he",
                               "--ray"])
    assert code == 2 and stderr.splitlines() == [
        "advquery: error: --features sift-he on Ray needs --vocab FILE: the vocabulary is trained in one process "
        "(an index built without --ray keeps its own as vocabulary.npz)"]


def test_shards_together_are_the_whole_batch(photos, serial, tmp_path):
    out = tmp_path / "out"
    runs = [run_cli(["protect", str(photos), "-o", str(out), "--report", str(tmp_path / f"shard{i}.jsonl"),
                     "--shard", f"{i}/2", *QUICK]) for i in (1, 2)]
    assert sorted(code for code, _, _ in runs) == [0, 1]  # the broken file is in one shard only
    assert _contents(out) == serial["outputs"]
    inputs = [{line["input"] for line in _lines(tmp_path / f"shard{i}.jsonl", out)} for i in (1, 2)]
    assert not inputs[0] & inputs[1] and len(inputs[0]) + len(inputs[1]) == N_PHOTOS + 1
    assert abs(len(inputs[0]) - len(inputs[1])) <= 1


@pytest.mark.parametrize("options, message", [
    (["--shard", "3/2"], "argument --shard: expected I/N with 1 <= I <= N, got '3/2' (see advquery protect --help)"),
    (["--shard", "0/4"], "argument --shard: expected I/N with 1 <= I <= N, got '0/4' (see advquery protect --help)"),
    (["--shard", "half"], "argument --shard: expected I/N with 1 <= I <= N, got 'half' (see advquery protect --help)"),
    (["--threads", "0"], "argument --threads: expected an integer in 1..4096, got '0' (see advquery protect --help)"),
    (["--workers", "0"], "argument --workers: expected an integer in 1..4096, got '0' (see advquery protect --help)"),
    (["--ray", "photos/"], "argument --ray: expected auto, ray://HOST:PORT or HOST:PORT, got 'photos/' "
                           "(put --ray without an address after the inputs) (see advquery protect --help)"),
    (["--ray", "auto", "--workers", "2"], "--workers runs processes on this machine; on the cluster at auto Ray runs "
                                          "a task on every --threads CPUs it has"),
])
def test_bad_cluster_options_are_one_line_before_any_work(tmp_path, options, message):
    code, stdout, stderr = run_cli(["protect", str(tmp_path / "none.jpg"), "-o", str(tmp_path / "out"), *options])
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [f"advquery: error: {message}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, where", [
    ([], None),  # serially in this process
    (["--ray"], ("local", None)),  # a local instance with every CPU here
    (["--workers", "2", "--threads", "3"], ("local", 6)),  # a local instance of 2 workers of 3 CPUs
    (["--ray", "--workers", "2"], ("local", 2)),
    (["--ray", "ray://head:10001", "--threads", "4"], ("ray://head:10001", None)),  # the cluster's own CPUs
])
def test_where_a_batch_runs(options, where):
    args = build_parser().parse_args(["protect", "x.jpg", "-o", "out", *options])
    assert ray_target(args) == where


def test_address_where_no_ray_answers_is_one_line(photos, tmp_path):
    code, _, stderr = run_cli(["protect", str(photos), "-o", str(tmp_path / "out"), *QUICK, "--ray", "127.0.0.1:1"])
    assert code == 2 and stderr.splitlines() == ["advquery: error: --ray 127.0.0.1:1: cannot reach Ray (Connection refused)"]
    assert not (tmp_path / "out").exists()


def test_ray_option_without_ray_says_how_to_get_it(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "ray" else find_spec(name, *rest))
    code, _, stderr = run_cli(["protect", str(tmp_path / "none.jpg"), "-o", str(tmp_path / "out"), "--ray"])
    assert code == 2 and stderr.splitlines() == [
        "advquery: error: --ray needs Ray, which is not installed: pip install 'advquery[cluster]'"]


SERVER_FAILURE = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \"proxier.py\", line 772, "
                  "in Datapath\n    raise RuntimeError(\nRuntimeError: Starting Ray client server failed. See "
                  "ray_client_server_23000.err for detailed logs.")


@pytest.mark.parametrize("failures, outcome", [
    (1, None),  # a busy head's client server failed once: the second connection works
    (3, "--ray ray://127.0.0.1:{port}: cannot reach Ray (RuntimeError: Starting Ray client server failed. "
        "See ray_client_server_23000.err for detailed logs.)"),
])
def test_ray_client_connection_is_tried_again_and_a_remote_traceback_is_one_line(monkeypatch, failures, outcome):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'advquery[cluster]')")
    import ray

    from advquery import cluster

    calls = []

    def init(**options):
        calls.append(options["address"])
        if len(calls) <= failures:
            raise ConnectionAbortedError(SERVER_FAILURE)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(cluster, "CLIENT_RETRY_WAIT_S", 0.0)
    with socket.socket() as head:  # something answers at the address, as a Ray Client head does
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"ray://127.0.0.1:{head.getsockname()[1]}"
        if outcome is None:
            with cluster.ray_session(address):
                pass
        else:
            with pytest.raises(cluster.ClusterError) as error, cluster.ray_session(address):
                pass
            assert str(error.value) == outcome.format(port=head.getsockname()[1])
    assert len(calls) == min(failures + 1, cluster.CLIENT_TRIES)
