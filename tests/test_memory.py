"""Freed memory kept for reuse while network passes run (glibc): large blocks come from the heap inside
``reused_memory`` and from mmap again once the last block has ended, nested and across threads, and the attack
loop runs inside it for photos up to twice its working size; importing advquery asks PyTorch for huge pages. The
real model on a real photo for the attack; glibc's own accounting (``mallinfo2``)."""
import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from advquery import PIRE, load_model
from advquery.io import read_photo, to_tensor
from advquery.models import memory
from advquery.models.memory import reused_memory

HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"  # what importing advquery sets unless the environment does
LARGE = 64 * 2**20  # bytes: far above glibc's largest mmap threshold (32 MiB)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


@pytest.fixture(scope="module")
def mallinfo2():
    libc = memory._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc >= 2.33: reused_memory changes nothing here")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2


def mmapped(mallinfo2, nbytes: int | None = None) -> bool:
    """Whether a fresh tensor of ``nbytes`` is a block glibc mmapped (and unmaps when it is freed). By default a block
    larger than all the free memory in the heap by 64 MiB, which glibc cannot serve from a freed block of it: mapped
    wherever mmap is allowed for it."""
    nbytes = nbytes or mallinfo2().fordblks + LARGE
    block = torch.empty(nbytes, dtype=torch.uint8)
    alive = mallinfo2().hblkhd
    del block
    return alive - mallinfo2().hblkhd >= nbytes


def test_large_blocks_come_from_the_heap_inside_and_from_mmap_after(mallinfo2):
    assert mmapped(mallinfo2)  # glibc's default: straight from the kernel
    with reused_memory():
        assert not mmapped(mallinfo2)
        with reused_memory():  # nested: the inner end keeps the outer block's setting
            pass
        assert not mmapped(mallinfo2)
    assert mmapped(mallinfo2)  # large blocks mapped again once the last block has ended, but 8 MiB ones
    assert not mmapped(mallinfo2, LARGE // 8)  # not: glibc's limits as its own adjustment leaves them


def test_blocks_in_threads_share_one_count(mallinfo2):
    entered, release = threading.Event(), threading.Event()

    def other_block():
        with reused_memory():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other_block)
    thread.start()
    entered.wait(10)
    with reused_memory():
        pass  # ends first: the other thread's block is still on
    assert not mmapped(mallinfo2)
    release.set()
    thread.join(10)
    assert mmapped(mallinfo2)


@pytest.mark.parametrize("size, reused", [(320, True), (96, False)])
def test_attack_passes_reuse_memory_for_photos_up_to_twice_the_working_size(mallinfo2, ukbench_dir, size, reused):
    model = load_model("efficientnet-lite0-gem", device="cpu")
    photo = to_tensor(read_photo(ukbench_dir / "ukbench00000.jpg").rgb)  # 640 x 480
    during = []
    attack = PIRE(model, eps=3 / 255, steps=2, size=size, seed=0,
                  on_step=lambda *_: during.append(mmapped(mallinfo2)))
    attack(photo)
    assert during == [not reused] * 2
    assert mmapped(mallinfo2)


def faults_making_large_tensors(environment: dict) -> int:
    """Minor page faults of a new process that imports advquery, then makes ten new 144 MB tensors (a
    12-megapixel photo's), with ``environment`` added to this one's."""
    code = ("import advquery, resource, torch\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(10):\n    torch.ones(3, 4000, 3000)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES}
    done = subprocess.run([sys.executable, "-c", code], env=env | environment, capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_importing_advquery_asks_for_huge_pages():
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not setting.exists() or "[madvise]" not in setting.read_text():  # "always" backs every block, "never" none
        pytest.skip("the kernel's transparent huge pages are not 'madvise' here: asking for them changes nothing")
    assert faults_making_large_tensors({}) * 4 < faults_making_large_tensors({HUGE_PAGES: "0"})
