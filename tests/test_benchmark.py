"""The benchmark's table of device peaks (no device needed)."""

import types

import pytest

from cyclegan_jax import benchmark


def device(kind):
  return types.SimpleNamespace(device_kind=kind)


@pytest.mark.parametrize('kind, dtype, peak', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA H200', 'float32', 67e12),
    ('NVIDIA H200 NVL', 'bfloat16', 835e12),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312e12),
    ('NVIDIA L4', 'bfloat16', 121e12),
    ('NVIDIA L40S', 'bfloat16', 362e12),
    ('Tesla V100-SXM2-16GB', 'float32', 15.7e12),
    ('TPU v5 lite', 'bfloat16', 197e12),
    ('TPU v5p', 'bfloat16', 459e12),
])
def test_peak_flops_takes_the_longest_matching_prefix(kind, dtype, peak):
  assert benchmark.peak_flops(device(kind), dtype) == peak


def test_peak_flops_of_an_unlisted_device_is_unknown():
  assert benchmark.peak_flops(device('cpu'), 'float32') is None
  assert benchmark.peak_flops(device('NVIDIA GeForce RTX 4090'), 'bfloat16') is None


def test_importing_the_benchmark_leaves_the_other_commands_their_flags():
  """Regression: benchmark's module-level --config made importing cyclegan_jax.main afterwards
  (as test_main does in the same pytest process) fail with a duplicate flag."""
  from cyclegan_jax import main  # pylint: disable=g-import-not-at-top,unused-import
  assert 'steps' not in benchmark.FLAGS
