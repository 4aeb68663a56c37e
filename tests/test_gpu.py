"""The same code on CUDA with mixed precision (skipped without a GPU).

Runtime on a GPU: a few seconds. Run only these with ``pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, tiny_config

from diffst.data.lr import simulate_lr
from diffst.infer import model_from_trainer, super_resolve
from diffst.precision import autocast_dtype
from diffst.train import TrainConfig, Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none found)"),
]


def _trainer(device: str, bf16: bool) -> Trainer:
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=6, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0, seed=0,
                     bf16=bf16, device=device)
    return Trainer(samples, samples[0].genes, 5, tiny_config(), tc)


def test_training_on_cuda_with_bf16_tracks_the_fp32_run():
    # noise and timesteps are drawn on the GPU there (no host RNG per step), so a CUDA run is
    # compared with a CUDA run: same seed, same batches, same noise
    bf16 = _trainer("cuda", bf16=True)
    assert next(bf16.model.parameters()).is_cuda
    bf16.fit(progress=False)
    fp32 = _trainer("cuda", bf16=False)
    fp32.fit(progress=False)
    assert np.isfinite(bf16.history).all()
    np.testing.assert_allclose(bf16.history, fp32.history, rtol=0.1, atol=0.02)
    cpu = _trainer("cpu", bf16=False)
    cpu.fit(progress=False)  # other noise: the same loss level, not the same values
    assert abs(np.mean(fp32.history) - np.mean(cpu.history)) < 0.5 * np.mean(cpu.history)


@pytest.mark.parametrize("autocast", [False, True])
def test_super_resolve_on_cuda_matches_cpu_loosely(autocast):
    trainer = _trainer("cuda", bf16=False)
    trainer.fit(steps=2, progress=False)
    lm_gpu = model_from_trainer(trainer)
    lr = simulate_lr(make_sample(seed=3, size=20), 5)
    kwargs = dict(steps=3, n_samples=2, patch=10, overlap=5, seed=1, progress=False)
    res_gpu = super_resolve(lm_gpu, lr, autocast=autocast, channels_last=autocast, **kwargs)
    assert autocast_dtype("cuda") in (torch.bfloat16, torch.float16)
    trainer.ema.to("cpu")
    trainer.device = torch.device("cpu")
    res_cpu = super_resolve(model_from_trainer(trainer), lr, **kwargs)
    assert res_gpu.mean.shape == res_cpu.mean.shape == (4, 20, 20)
    assert np.isfinite(res_gpu.mean).all()
    scale = max(float(res_cpu.mean.max()), 1.0)
    tol = 0.1 if autocast else 0.02  # same noise (drawn on the CPU), different kernels
    assert np.abs(res_gpu.mean - res_cpu.mean).max() <= tol * scale


def _prepared_sections() -> list:
    from diffst.data.normalize import GeneScaler
    from diffst.data.patches import prepare_training_sample

    samples = [make_sample(seed=0, size=30), make_sample(seed=1, size=25)]
    scaler = GeneScaler.fit([s.expr for s in samples], [s.mask for s in samples])
    return [prepare_training_sample(s, 5, scaler, k=4) for s in samples]


@pytest.mark.parametrize("products", [(2, 4), None])
def test_device_sampler_on_cuda_cuts_the_cpu_batches(products):
    from diffst.data.device_patches import DevicePatchSampler

    prepared = _prepared_sections()
    gpu = DevicePatchSampler(prepared, 10, seed=4, device="cuda", image_products=products)
    cpu = DevicePatchSampler(prepared, 10, seed=4, device="cpu", image_products=products)
    assert all(p.device.type == "cuda" for p in gpu.pools) and gpu.device_bytes > 0
    for _ in range(3):
        a, b = gpu.draw(16, 2, 4, 6), cpu.draw(16, 2, 4, 6)
        for key in b:
            assert a[key].is_cuda and a[key].dtype == b[key].dtype, key
            torch.testing.assert_close(a[key].cpu(), b[key], atol=1e-6, rtol=0, msg=key)


def test_sections_over_the_cuda_budget_are_cut_in_host_memory():
    from diffst.data.device_patches import DevicePatchSampler

    prepared = _prepared_sections()
    whole = DevicePatchSampler(prepared, 10, seed=2, device="cuda", image_products=(2, 4))
    split = DevicePatchSampler(prepared, 10, seed=2, device="cuda", image_products=(2, 4),
                               device_budget=whole.device_bytes // 2)
    assert [p.device.type for p in split.pools] == ["cuda", "cpu"]
    assert 0 < split.device_bytes < whole.device_bytes
    a, b = whole.draw(16, 2, 4, 6), split.draw(16, 2, 4, 6)
    for key in a:
        assert b[key].is_cuda
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


def test_trainer_keeps_its_sections_on_cuda_and_trains_with_compile():
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=3, batch_size=4, lr=2e-3, patch=10, work_um_per_px=2.0, seed=0,
                     device="cuda", compile=True)
    trainer = Trainer(samples, samples[0].genes, 5, tiny_config(), tc)
    assert trainer.sampler.pools[0].maps.is_cuda and trainer.sampler.products == (2, 4)
    assert trainer.train_module is not None
    trainer.fit(progress=False)
    assert len(trainer.history) == 3 and np.isfinite(trainer.history).all()
