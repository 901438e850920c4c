"""trainers/memory.py: what a run's recorded peak memory and saved bytes count."""

from pathlib import Path

import pytest
import torch

from trainers.memory import PeakMemory, folder_bytes, paged_optimizer_bytes


def _optimizer_with_state(paged: bool) -> torch.optim.Optimizer:
    param = torch.nn.Parameter(torch.zeros(1000))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.ones_like(param)
    optimizer.step()
    if paged:  # how bitsandbytes marks a state tensor it keeps in unified memory
        for state in optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.numel() == 1000:
                    value.is_paged = True
    return optimizer


def test_paged_optimizer_bytes_counts_only_paged_state():
    assert paged_optimizer_bytes(_optimizer_with_state(paged=False)) == 0
    # AdamW keeps exp_avg and exp_avg_sq: two fp32 tensors of 1000 elements; the scalar step is not paged
    assert paged_optimizer_bytes(_optimizer_with_state(paged=True)) == 2 * 1000 * 4


def test_cpu_peak_counts_an_allocation_made_after_start_and_not_an_earlier_peak():
    earlier = torch.ones(256 * 2**20 // 4)  # 256 MiB touched then freed: the process's peak RSS is now that high
    del earlier
    memory = PeakMemory(torch.device("cpu")).start()
    if memory.kind == "cpu_peak_rss_delta_unreset":
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    peak = memory.peak_bytes()
    del block
    assert 60 * 2**20 <= peak < 160 * 2**20, "the 256 MiB peak from before start() must not be counted"


def test_restart_peak_forgets_a_peak_after_start_but_keeps_counting_from_start():
    memory = PeakMemory(torch.device("cpu")).start()
    if memory.kind == "cpu_peak_rss_delta_unreset":
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    kept = torch.ones(32 * 2**20 // 4)  # 32 MiB that stays resident (loaded weights)
    transient = torch.ones(256 * 2**20 // 4)  # 256 MiB touched then freed (a load's transient)
    del transient
    memory.restart_peak()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched (a training step's activations)
    peak = memory.peak_bytes()
    del block, kept
    assert 90 * 2**20 <= peak < 200 * 2**20, "kept + block count from start(); the 256 MiB transient does not"


def test_cpu_peak_says_when_it_could_not_reset_the_earlier_peak(monkeypatch):
    real_write = Path.write_text

    def refuse_clear_refs(self, *args, **kwargs):
        if self.name == "clear_refs":
            raise PermissionError(13, "Permission denied")
        return real_write(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", refuse_clear_refs)
    assert PeakMemory(torch.device("cpu")).start().kind == "cpu_peak_rss_delta_unreset"


def test_folder_bytes_sums_every_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 5)
    assert folder_bytes(tmp_path) == 15


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_adds_paged_optimizer_state():
    bnb = pytest.importorskip("bitsandbytes")
    param = torch.nn.Parameter(torch.zeros(2**20, device="cuda"))
    memory = PeakMemory(torch.device("cuda")).start()
    optimizer = bnb.optim.PagedAdamW32bit([param])
    param.grad = torch.ones_like(param)
    optimizer.step()
    paged = paged_optimizer_bytes(optimizer)
    assert paged == 2 * 2**20 * 4  # both AdamW moments paged (bitsandbytes pages states of >= 1e5 elements)
    assert memory.peak_bytes(optimizer) >= paged + 2**20 * 4  # + the gradient, which torch allocates
