"""keep_freed_memory: the maps of a repeated pass are reused without touching new pages.

Each case runs in a fresh interpreter (the setting is process-wide) and counts the minor
page faults of the fourth pass of a convolution + ReLU whose two 32 MB maps glibc's
defaults map afresh every pass (about 24 600 faults here with 4 KB pages, at least 32 with
2 MB huge pages) and that a kept heap reuses (none).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="keep_freed_memory acts on glibc only")

_PROBE = r'''
import json, resource, sys
import torch
how = sys.argv[1]
if how == "function":
    from segscope.allocator import keep_freed_memory
    applied = keep_freed_memory()
elif how == "cli":
    from segscope.cli import main
    try:
        main(["--version"])
    except SystemExit:
        pass
    applied = None
else:
    applied = None
torch.set_num_threads(1)
conv = torch.nn.Conv2d(3, 32, 3, padding=1)
x = torch.rand(1, 3, 512, 512)
def once():  # maps of 32 MB: above the largest size glibc serves from its heap
    with torch.no_grad():
        torch.relu(conv(x)).sum()
for _ in range(3):
    once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
once()
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
'''


def probe(how: str, allocator: str = "") -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "SEGSCOPE_ALLOCATOR")}
    if allocator:
        env["SEGSCOPE_ALLOCATOR"] = allocator
    out = subprocess.run([sys.executable, "-c", _PROBE, how], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_glibc_defaults_fault_every_pass():
    # the premise: without the setting every pass faults its maps' pages again
    assert probe("none")["faults"] >= 32


def test_kept_heap_reuses_a_freed_block():
    res = probe("function")
    assert res["applied"] is True
    assert res["faults"] <= 8


def test_the_command_line_keeps_freed_memory():
    assert probe("cli")["faults"] <= 8


def test_system_setting_leaves_glibc_alone():
    res = probe("function", allocator="system")
    assert res["applied"] is False
    assert res["faults"] >= 32
