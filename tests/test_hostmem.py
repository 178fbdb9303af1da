"""keep_freed_memory: steady-state forward+backward passes must not page-fault their
activations in again."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from rl_scaling.hostmem import keep_freed_memory
from agents.models import build_model
enabled = keep_freed_memory() if sys.argv[1] == "on" else False
torch.set_num_threads(1)
model = build_model("impala_cnn", (64, 64, 3), 15, width=0.5)
obs = torch.randint(0, 255, (512, 64, 64, 3), dtype=torch.uint8)  # 67 MB first activation
def step():
    logits, value = model(obs)
    (logits.logsumexp(-1).mean() + value.square().mean()).backward()
for _ in range(2):  # warm-up: the heap grows to the working set once
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    step()
print(enabled, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_reused_without_page_faults():
    enabled, faults_on = _faults("on")
    if not enabled:
        pytest.skip("C library is not glibc")
    _, faults_off = _faults("off")
    # the default faults the activations of every forward+backward in again (~100k pages);
    # with freed memory kept, the steady state reuses them in place
    assert faults_off > 20_000
    assert faults_on < faults_off / 10
