"""Benchmarks the real train step (and generator inference) on synthetic data of a config's size.

    python -m cyclegan_jax.benchmark --config=configs/monet.py                  # 256 px, 9 blocks
    python -m cyclegan_jax.benchmark --config=configs/monet.py --config.data.crop_size=128 \
        --config.model.generator=resnet_6blocks                                 # 128 px, 6 blocks
    python -m cyclegan_jax.benchmark --config=configs/monet.py --inference      # G(x) only
    python -m cyclegan_jax.benchmark --config=configs/default.py --config.ensemble.seed=0,1,2,3

Builds exactly the training step of `cyclegan_jax.train` (all four networks, losses, image pools,
both Adam updates) on the devices of this host, feeds it uniform random images in [-1, 1] of the
configured batch and crop size, and reports: compile time; median / min / max step time over
`--steps` timed steps after `--warmup` untimed ones; examples/s (one example = one A and one B
image); XLA's FLOP count for one step and the achieved FLOP/s; peak memory (device statistics
where the backend has them, else the compiled program's buffers and the process's peak RSS); and,
on a GPU/TPU whose peak is known, the fraction of it. With ensemble fields set, the step of all
members at once (`member_steps_per_s`: members x steps per second). The second-to-last line holds
every figure as `key=value`; the last line is `step_time_s=<median seconds>`.
"""

import resource
import statistics
import time
from typing import Any, Callable

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from cyclegan_jax import cli
from cyclegan_jax import config_lib
from cyclegan_jax import ensemble
from cyclegan_jax import errors
from cyclegan_jax import state as state_lib
from cyclegan_jax import summaries
from cyclegan_jax import train

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a program, so that importing this module
  (for `benchmark` or `peak_flops`) beside another command's flags does not redefine --config."""
  config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
  flags.DEFINE_integer('steps', 10, 'Timed steps.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
  flags.DEFINE_bool('inference', False, 'Benchmark generator G inference instead of training.')
  flags.mark_flags_as_required(['config'])

# Dense peak FLOP/s per device, (float32, bfloat16), by `device_kind` prefix (the longest matching
# prefix wins), from the vendors' data sheets: NVIDIA H100 and H200 (plain names: the SXM parts),
# A100 (SXM and PCIe alike), L4, L40, L40S and V100 (SXM2, PCIe) product data sheets; Google Cloud
# TPU system architecture pages. Dense means without 2:4 sparsity (NVIDIA also quotes twice these
# tensor figures "with sparsity"). float32 is the FP32 (non-tensor-core) peak; XLA's default
# precision lets cuDNN and cuBLAS run float32 convolutions and matmuls as TF32 on tensor cores from
# the A100 on (H100 SXM: 495 TFLOP/s dense TF32), so a float32 fraction above 1 is possible there.
# The V100 has no bfloat16 units: its bfloat16 entry is its FP32 peak.
PEAK_FLOPS = {
    'NVIDIA H100': (67e12, 989e12),
    'NVIDIA H100 PCIe': (51e12, 756e12),
    'NVIDIA H100 NVL': (60e12, 835e12),
    'NVIDIA H200': (67e12, 989e12),
    'NVIDIA H200 NVL': (60e12, 835e12),
    'NVIDIA A100': (19.5e12, 312e12),
    'NVIDIA L4': (30.3e12, 121e12),
    'NVIDIA L40': (90.5e12, 181e12),
    'NVIDIA L40S': (91.6e12, 362e12),
    'Tesla V100-SXM2': (15.7e12, 15.7e12),
    'Tesla V100-PCIE': (14e12, 14e12),
    'TPU v4': (275e12, 275e12),
    'TPU v5 lite': (197e12, 197e12),
    'TPU v5': (459e12, 459e12),
    'TPU v6 lite': (918e12, 918e12),
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
  """The device's dense peak for `dtype` (PEAK_FLOPS), or None for a device not listed."""
  for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
    if device.device_kind.startswith(prefix):
      return dict(zip(('float32', 'bfloat16'), PEAK_FLOPS[prefix]))[dtype]
  return None


def time_calls(call: Callable[[], Any], steps: int, warmup: int) -> list[float]:
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return times


def flop_count(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def memory_figures(compiled) -> dict[str, float]:
  figures = {'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    figures['device_peak_gib'] = stats['peak_bytes_in_use'] / 2**30
  analysis = compiled.memory_analysis()
  if analysis is not None:
    buffers = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
               analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    figures['program_buffers_gib'] = buffers / 2**30
  return figures


def benchmark(config, steps: int, warmup: int, inference: bool) -> dict[str, Any]:
  members = None
  if ensemble.is_ensemble(config):
    config_lib.validate(config, num_devices=1)
    members = ensemble.members(config)
  else:
    config_lib.validate(config, num_devices=jax.device_count())
  size, batch_size = config.data.crop_size, config.batch_size
  shape_A, shape_B = state_lib.image_shapes(config)
  trainer = train.build_trainer(config, epoch_steps=1000, members=members)
  if inference and trainer.num_members > 1:
    raise errors.InvalidValueError('--inference times one generator: leave config.ensemble unset')
  rng = np.random.default_rng(0)
  rows = [{
      'A': rng.uniform(-1, 1, (batch_size, *shape_A)).astype(np.float32),
      'B': rng.uniform(-1, 1, (batch_size, *shape_B)).astype(np.float32),
  } for _ in range(trainer.num_members)]
  if trainer.num_members == 1:
    batch = jax.device_put(rows[0], trainer.batch_sharding)
  else:
    batch = tuple(
        jax.device_put(slot, trainer.batch_sharding)
        for slot in ensemble.to_slots(rows, trainer.layout))
  state = trainer.init()
  start = time.perf_counter()
  if inference:
    generate = jax.jit(lambda params, x: trainer.networks.G.apply({'params': params['G']}, x),
                       in_shardings=(trainer.state_sharding, trainer.batch_sharding),
                       out_shardings=trainer.batch_sharding)
    compiled = generate.lower(state.params, batch['A']).compile()
    call = lambda: compiled(state.params, batch['A'])
  else:
    compiled = trainer.step.lower(state, batch).compile()
    holder = {'state': state}

    def call():
      holder['state'], metrics = compiled(holder['state'], batch)
      return metrics

  compile_s = time.perf_counter() - start
  times = time_calls(call, steps, warmup)
  median = statistics.median(times)
  device = jax.devices()[0]
  results = {
      'workload': 'generator_inference' if inference else 'train_step',
      'platform': device.platform,
      'device_kind': device.device_kind.replace(' ', '_'),
      'devices': jax.device_count(),
      'generator': config.model.generator,
      'crop_size': size,
      'batch_size': batch_size,
      'compute_dtype': config.compute_dtype,
      'compile_s': compile_s,
      'step_time_median_s': median,
      'step_time_min_s': min(times),
      'step_time_max_s': max(times),
      'examples_per_s': batch_size * trainer.num_members / median,
      'members': trainer.num_members,
      'member_steps_per_s': trainer.num_members / median,
  }
  flops = flop_count(compiled)
  if flops and trainer.layout is not None:
    flops *= len(trainer.layout.slots)  # The program counted runs once per slot.
  if flops:
    results['flops_per_step'] = flops
    results['achieved_flops_per_s'] = flops / median
    peak = peak_flops(device, config.compute_dtype)
    if peak:
      results['fraction_of_peak'] = flops / median / (peak * jax.device_count())
  results.update(memory_figures(compiled))
  return results


def main(argv):
  cli.no_extra_arguments(argv)
  results = benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.inference)
  print(f'{results["workload"]}: {results["generator"]}, {results["crop_size"]} px, batch '
        f'{results["batch_size"]}, {results["compute_dtype"]}, {results["devices"]} x '
        f'{results["device_kind"]}: compile {results["compile_s"]:.1f} s; step median '
        f'{results["step_time_median_s"]:.4f} s (min {results["step_time_min_s"]:.4f}, max '
        f'{results["step_time_max_s"]:.4f}); {results["examples_per_s"]:.2f} examples/s')
  print('benchmark: ' + summaries.key_values(results))
  print(f'step_time_s={results["step_time_median_s"]:.6f}', flush=True)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
