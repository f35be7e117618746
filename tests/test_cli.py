"""The ``advquery`` command run in-process on real UKBench photos at tiny working sizes."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch

from advquery.cli.common import (MAX_WORKING_SIZE, CommandError, check_output_file, describe_out_of_memory,
                                 user_errors)
from advquery.extraction import MIN_SIZE
from advquery.cli.main import build_parser, main
from advquery.evaluation.metrics import compute_map
from advquery.io import write_photo_atomic
from advquery.retrieval import ImageIndex
from helpers import replacing_folder

SIZE = 96


def _run(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command (for module-scoped fixtures, where capsys is not available)."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------- index, search


@pytest.fixture(scope="module")
def built(ukbench_dir, tmp_path_factory):
    """``index build`` over 8 photos and one corrupt file; the inputs' listing before and after."""
    inputs = tmp_path_factory.mktemp("photos")
    for p in sorted(ukbench_dir.glob("*.jpg"))[:8]:
        shutil.copy(p, inputs / p.name)
    (inputs / "x.jpg").write_text("this is not a JPEG")
    before = _listing(inputs)
    out_dir = tmp_path_factory.mktemp("out") / "idx"
    code, stdout, stderr = _run(["index", "build", str(inputs), "-o", str(out_dir), "--size", str(SIZE)])
    return {"inputs": inputs, "before": before, "after": _listing(inputs), "index": out_dir,
            "code": code, "stdout": stdout, "stderr": stderr}


def test_index_build_skips_corrupt_file(built):
    assert built["code"] == 1
    skipped = [line for line in built["stderr"].splitlines() if "x.jpg" in line]
    assert skipped and all("skipped" in line for line in skipped)
    index = ImageIndex.load(built["index"])
    expected = sorted(p.resolve() for p in built["inputs"].glob("ukbench*.jpg"))
    assert index.manifest.count == 8 and sorted(index.paths) == expected
    assert index.manifest.size == SIZE and index.manifest.model == "efficientnet-lite0-gem"
    assert index.descriptors.shape == (8, index.manifest.dim)
    assert built["before"] == built["after"]  # nothing written next to the inputs


def test_search_json(built, capsys):
    query = built["inputs"] / "ukbench00005.jpg"
    code = main(["search", str(query), "--index", str(built["index"]), "--json", "-k", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert set(result) == {"query", "results"} and result["query"] == str(query)
    hits = result["results"]
    assert len(hits) == 3 and all(set(h) == {"path", "score"} for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert Path(hits[0]["path"]) == query.resolve()
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert len({h["path"] for h in hits}) == 3


def test_search_text_output(built, capsys):
    query = built["inputs"] / "ukbench00002.jpg"
    assert main(["search", str(query), "--index", str(built["index"]), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\s*1\s+\d\.\d{4}\s+.*ukbench00002\.jpg", lines[0])


def test_search_with_other_size_refused(built, capsys):
    query = built["inputs"] / "ukbench00000.jpg"
    code = main(["search", str(query), "--index", str(built["index"]), "--size", "128"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "size" in err and "Traceback" not in err


def test_search_without_index(tmp_path, ukbench_dir, capsys):
    code = main(["search", str(ukbench_dir / "ukbench00000.jpg"), "--index", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not an advquery index" in err and len(err.strip().splitlines()) == 1


def test_index_build_into_an_existing_file_is_refused_before_describing(built, tmp_path):
    (tmp_path / "idx").write_text("a file")
    code, _, stderr = _run(["index", "build", str(built["inputs"]), "-o", str(tmp_path / "idx"), "--size", str(SIZE)])
    # before describing: the corrupt x.jpg among the inputs would have said 'skipped' otherwise
    assert code == 2 and stderr.strip() == f"advquery: error: -o {tmp_path / 'idx'}: this is a file, not a folder"


def test_index_of_names_with_newlines_and_line_separators_is_searchable(ukbench_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["new\nline.jpg", "line\u2028sep.jpg", os.fsdecode(b"bytes\xff.jpg"), "caf\u00e9.jpg"]
    for i, name in enumerate(names):
        shutil.copy(ukbench_dir / f"ukbench{4 * i:05d}.jpg", photos / name)
    code, _, stderr = _run(["index", "build", str(photos), "-o", str(tmp_path / "idx"), "--size", str(SIZE)])
    assert code == 0, stderr
    for name in names:
        code, stdout, stderr = _run(["search", str(photos / name), "--index", str(tmp_path / "idx"), "-k", "1", "--json"])
        assert code == 0, stderr
        assert json.loads(stdout)["results"][0]["path"] == str((photos / name).resolve())
        code, stdout, _ = _run(["search", str(photos / name), "--index", str(tmp_path / "idx"), "-k", "2"])
        assert code == 0 and len(stdout.splitlines()) == 2  # one line per result, whatever the name


@pytest.mark.parametrize("argv, option", [
    (["protect", "x.jpg", "-o", "out", "--size", "31"], "--size"),
    (["protect", "x.jpg", "-o", "out", "--size", "5"], "--size"),
    (["protect", "x.jpg", "-o", "out", "--steps", "0"], "--steps"),
    (["protect", "x.jpg", "-o", "out", "--quality", "101"], "--quality"),
    (["protect", "x.jpg", "-o", "out", "--eps", "nan"], "--eps"),
    (["protect", "x.jpg", "-o", "out", "--eps", "inf"], "--eps"),
    (["protect", "x.jpg", "-o", "out", "--ssim-weight", "inf"], "--ssim-weight"),
    (["protect", "x.jpg", "-o", "out", "--target-ssim", "1"], "--target-ssim"),
    (["protect", "x.jpg", "-o", "out", "--seed", "-1"], "--seed"),
    (["protect", "x.jpg", "-o", "out", "--max-pixels", "0"], "--max-pixels"),
    (["protect", "x.jpg", "-o", "out", "--size", "big"], "--size"),
    (["verify", "a.jpg", "b.jpg", "--size", "5"], "--size"),
    (["verify", "a.jpg", "b.jpg", "-k", "0"], "-k"),
    (["index", "build", "x.jpg", "-o", "idx", "--size", "5"], "--size"),
    (["index", "build", "x.jpg", "-o", "idx", "--batch-size", "0"], "--batch-size"),
    (["index", "build", "x.jpg", "-o", "idx", "--batch-size", "-3"], "--batch-size"),
    (["index", "build", "x.jpg", "-o", "idx", "--vocab-size", "0"], "--vocab-size"),
    (["search", "x.jpg", "--index", "idx", "-k", "-1"], "-k"),
    (["search", "x.jpg", "--index", "idx", "--size", "16"], "--size"),
    (["eval", "--dataset", "ukbench-mini", "--size", "0"], "--size"),
    (["demo", "-k", "0"], "-k"),
    (["demo", "--size", "12"], "--size"),
    (["ui", "--size", "8"], "--size"),
    (["ui", "--port", "70000"], "--port"),
    (["ui", "--max-upload-mb", "0"], "--max-upload-mb"),
    # Upper bounds: refused up front, not an allocation of petabytes or an overflow deep inside.
    (["protect", "x.jpg", "-o", "out", "--size", "100000000"], "--size"),
    (["protect", "x.jpg", "-o", "out", "--steps", "100000000000000000000"], "--steps"),
    (["protect", "x.jpg", "-o", "out", "--steps", "100001"], "--steps"),
    (["protect", "x.jpg", "-o", "out", "--max-pixels", str(2**31)], "--max-pixels"),
    (["protect", "x.jpg", "-o", "out", "--threads", "5000"], "--threads"),
    (["protect", "x.jpg", "-o", "out", "--workers", "100000"], "--workers"),
    (["verify", "a.jpg", "b.jpg", "--size", "100000000"], "--size"),
    (["index", "build", "x.jpg", "-o", "idx", "--size", "8193"], "--size"),
    (["index", "build", "x.jpg", "-o", "idx", "--batch-size", str(2**31)], "--batch-size"),
    (["index", "build", "x.jpg", "-o", "idx", "--vocab-size", str(2**40)], "--vocab-size"),
    (["search", "x.jpg", "--index", "idx", "-k", str(2**31)], "-k"),
    (["search", "x.jpg", "--index", "idx", "--rerank", str(2**31)], "--rerank"),
    (["eval", "--dataset", "ukbench-mini", "--size", "9000"], "--size"),
    (["ui", "--steps", "1000000"], "--steps"),
    (["ui", "--max-upload-mb", "1e303"], "--max-upload-mb"),
])
def test_every_numeric_option_is_checked_up_front_with_one_rule(tmp_path, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)  # nothing to read there: a check after any work would fail differently
    code, stdout, stderr = _run(argv)
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"advquery: error: argument {option}") and "expected " in stderr
    assert list(tmp_path.iterdir()) == []


def test_float_ceiling_is_printed_whole_and_every_size_help_states_the_range(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _run(["ui", "--max-upload-mb", "2e6"])
    assert code == 2 and "expected a number in (0, 1000000], got '2e6'" in stderr, stderr
    commands = build_parser()._subparsers._group_actions[0].choices
    helps = {name: next(a.help for a in commands[name]._actions if "--size" in a.option_strings)
             for name in ("ui", "protect", "verify", "eval")}
    for name, text in helps.items():
        assert f"long side in pixels, {MIN_SIZE} to {MAX_WORKING_SIZE} (default: " in text, (name, text)


def test_running_out_of_memory_is_one_line_and_exit_1(capsys):
    @user_errors
    def command(args):
        raise args.error

    torch_cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                             "you tried to allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)")
    for exc in (torch_cpu, MemoryError("Unable to allocate 72.8 TiB for an array"),
                torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")):
        assert command(argparse.Namespace(error=exc)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("advquery: error: out of memory (") and "--size" in err, err
    assert "can't allocate memory: you tried to allocate 40000000000000 bytes" in str(describe_out_of_memory(torch_cpu))
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError is not hidden
        command(argparse.Namespace(error=RuntimeError("a bug")))


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "tpu"])
def test_unavailable_device_is_one_line_listing_the_available_ones(tmp_path, device):
    for argv in (["protect", "x.jpg", "-o", str(tmp_path / "out")], ["index", "build", "x.jpg", "-o", "idx"],
                 ["verify", "a.jpg", "b.jpg"], ["eval", "--dataset", "ukbench-mini"]):
        code, _, stderr = _run([*argv, "--device", device])
        assert code == 2 and len(stderr.splitlines()) == 1 and f"'{device}'" in stderr, stderr
        assert "available" in stderr and "cpu" in stderr


# -------------------------------------------------------------------------------------------- eval


def _ukbench_gnd(names: list[str]) -> list[dict]:
    """UKBench by its definition: groups of 4 consecutive numbers; positives the group-mates, junk the query."""
    groups = [int(n[-5:]) // 4 for n in names]
    return [{"ok": [j for j, g in enumerate(groups) if g == gi and j != i], "junk": [i]}
            for i, gi in enumerate(groups)]


@pytest.fixture(scope="module")
def evaluated(data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    cache = tmp / "cache"
    code, stdout, stderr = _run(["eval", "--dataset", "ukbench-mini", "--data-root", str(data_root),
                                 "--size", str(SIZE), "--json", str(tmp / "report.json"),
                                 "--ranks", str(tmp / "ranks.npy"), "--cache", str(cache)])
    assert code == 0, stderr
    cached = sorted(cache.rglob("*.npy"))  # listed before any later run can add to it
    return {"tmp": tmp, "cache": cache, "cached": cached, "stdout": stdout,
            "report": json.loads((tmp / "report.json").read_text()), "ranks": np.load(tmp / "ranks.npy")}


def test_eval_report(evaluated, data_root):
    report = evaluated["report"]
    medium = report["protocols"]["medium"]
    assert medium["map"] > medium["random_map"] + 0.3  # a real model is far above chance
    names = sorted(p.stem for p in (data_root / "ukbench-mini" / "jpg").glob("*.jpg"))
    assert sorted(medium["per_query"]) == names and len(names) == 56
    assert medium["map"] == pytest.approx(np.mean(list(medium["per_query"].values())), abs=1e-9)
    ranks = evaluated["ranks"]
    assert ranks.shape == (56, 56) and np.issubdtype(ranks.dtype, np.integer)
    assert all(sorted(col) == list(range(56)) for col in ranks.T)  # each column a full permutation
    rescored = compute_map(ranks, _ukbench_gnd(names))
    assert rescored.map == pytest.approx(medium["map"], abs=1e-9)
    assert "medium" in evaluated["stdout"] and "mAP" in evaluated["stdout"]


def _eval_again(evaluated, data_root, capsys, *options) -> dict:
    """The JSON report of ``eval`` on ukbench-mini with ``options``, sharing the first run's cache."""
    out = evaluated["tmp"] / "again.json"
    code = main(["eval", "--dataset", "ukbench-mini", "--data-root", str(data_root), "--size", str(SIZE),
                 *options, "--json", str(out), "--cache", str(evaluated["cache"])])
    assert code == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def test_eval_with_replaced_query_uses_cache(evaluated, data_root, capsys):
    assert evaluated["cached"], "the first run left no cached database descriptors"
    assert "database" in evaluated["report"]["seconds"]  # the first run extracted the database
    # ukbench00000 replaced by a photo of another object (group 5), saved as PNG under the same stem.
    queries = replacing_folder(evaluated["tmp"] / "queries", data_root, "ukbench00000")
    replaced = _eval_again(evaluated, data_root, capsys, "--query-dir", str(queries))
    assert "database" not in replaced["seconds"]  # database descriptors came from the cache
    assert sorted(evaluated["cache"].rglob("*.npy")) == evaluated["cached"]
    before = evaluated["report"]["protocols"]["medium"]["per_query"]
    after = replaced["protocols"]["medium"]["per_query"]
    assert after["ukbench00000"] < before["ukbench00000"]
    assert {k: v for k, v in after.items() if k != "ukbench00000"} == \
        {k: v for k, v in before.items() if k != "ukbench00000"}


def test_eval_with_transformed_queries(evaluated, data_root, capsys):
    report = _eval_again(evaluated, data_root, capsys, "--transform", "crop:40%")
    assert report["transform"] == "crop:0.4" and "database" not in report["seconds"]
    assert "transform crop:0.4" in capsys.readouterr().out
    before, after = evaluated["report"]["protocols"]["medium"], report["protocols"]["medium"]
    assert after["per_query"] != before["per_query"]  # the queries really were cropped (the database was not)
    assert after["map"] > after["random_map"]


def test_eval_json_and_ranks_are_written_through_symbolic_links(evaluated, data_root, capsys):
    tmp = evaluated["tmp"]
    (tmp / "linked.json").symlink_to("summary-target.json")  # not there yet: created through the link
    (tmp / "ranks-target.npy").write_bytes(b"old ranks")
    (tmp / "linked.npy").symlink_to(tmp / "ranks-target.npy")
    code = main(["eval", "--dataset", "ukbench-mini", "--data-root", str(data_root), "--size", str(SIZE),
                 "--json", str(tmp / "linked.json"), "--ranks", str(tmp / "linked.npy"), "--cache", str(evaluated["cache"])])
    assert code == 0, capsys.readouterr().err
    assert (tmp / "linked.json").is_symlink() and (tmp / "linked.npy").is_symlink()  # the links stay links
    assert json.loads((tmp / "summary-target.json").read_text())["protocols"] == evaluated["report"]["protocols"]
    np.testing.assert_array_equal(np.load(tmp / "ranks-target.npy"), evaluated["ranks"])


def test_eval_output_through_a_file_descriptor_is_refused(data_root, tmp_path):
    """``eval --json /dev/stdout > out.txt``: the descriptor leads to out.txt, a regular file, which the output
    written whole would replace, losing the printed report. Refused up front, however the descriptor is named."""
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        done = subprocess.run([sys.executable, "-m", "advquery.cli.main", "eval", "--dataset", "ukbench-mini",
                               "--data-root", str(data_root), "--size", str(SIZE), "--json", "/dev/stdout"],
                              stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("advquery: error: --json /dev/stdout: names an open file descriptor"), done.stderr
    assert out.is_file() and out.read_text() == ""  # the shell's file, not replaced (nothing evaluated)
    (tmp_path / "linked.npy").symlink_to("/dev/stdout")
    (tmp_path / "fds").symlink_to("/proc/self/fd")
    for target in ("/dev/fd/1", "/proc/self/fd/1", "/dev/stderr", tmp_path / "linked.npy", tmp_path / "fds" / "1"):
        with pytest.raises(CommandError, match=r"--ranks .+: names an open file descriptor"):
            check_output_file(Path(target), "--ranks", whole=True)
    check_output_file(tmp_path / "dev" / "stdout", "--ranks", whole=True)  # a file of that name elsewhere is fine


def test_eval_with_bad_transform_is_one_line(data_root, capsys):
    code = main(["eval", "--dataset", "ukbench-mini", "--data-root", str(data_root), "--transform", "jpeg:200"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--transform" in err and "jpeg must be an integer" in err


def test_eval_with_replaced_database_image(evaluated, data_root, capsys):
    # The database's ukbench00001 becomes a photo of another object: its group-mates lose a positive.
    db_dir = replacing_folder(evaluated["tmp"] / "database", data_root, "ukbench00001")
    report = _eval_again(evaluated, data_root, capsys, "--db-dir", str(db_dir))
    assert report["replaced_database_images"] == 1 and "replaced_database_images" in report["seconds"]
    assert sorted(evaluated["cache"].rglob("*.npy")) == evaluated["cached"]  # the replacement was not cached
    before = evaluated["report"]["protocols"]["medium"]["per_query"]
    after = report["protocols"]["medium"]["per_query"]
    assert all(after[q] < before[q] for q in ("ukbench00000", "ukbench00002", "ukbench00003"))
    # The query ukbench00001 is still the original file, not the replaced database row (which is its own junk).
    assert after["ukbench00001"] == pytest.approx(before["ukbench00001"], abs=1e-9)


def test_eval_unknown_dataset(tmp_path, capsys):
    code = main(["eval", "--dataset", "nonexistent", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "nonexistent" in err and "ukbench-mini" in err and "roxford5k-mini" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_unknown_model(tmp_path, capsys):
    group = tmp_path / "mine" / "a"
    group.mkdir(parents=True)
    write_photo_atomic(group / "1.png", np.zeros((32, 32, 3), np.uint8), format="PNG")
    code = main(["eval", "--dataset", str(tmp_path / "mine"), "--model", "no-such-model", "--size", str(SIZE),
                 "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no-such-model" in err and "efficientnet-lite0-gem" in err and "Traceback" not in err


# -------------------------------------------------------------------------------------------- demo


def test_demo(capsys):
    assert main(["demo", "--size", str(SIZE), "--steps", "2"]) == 0  # the preset's steps: minutes of tracker views
    out = capsys.readouterr().out
    assert out.count("  protected ") == 6  # every sample photo
    match = re.search(r"Retrieval found (\d+) of (\d+) edited copies", out)
    assert match, out
    found, total = map(int, match.groups())
    assert total == 18
    assert found > total / 2  # random top-3 lists would hold about 3 of the 18 copies
