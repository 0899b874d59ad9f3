"""CycleGAN (Zhu et al., ICCV 2017) in JAX/Flax: unpaired image-to-image translation."""

import importlib.metadata
import os
import re

# jaxlib 0.10 hands large convolutions and matmuls on CPU to YNNPACK, whose convolutions (and
# their gradients) run several times slower here than XLA's own Eigen kernels: a 3x3 256 -> 256
# conv on 64 x 64 maps took 40 ms instead of 12, the paper's 256 px train step 9.9 s instead of
# 7.5 (README, "Results"). XLA reads XLA_FLAGS when its first backend starts, so this applies to
# every program of a process that imports the package before its first computation. A flag the
# user sets explicitly wins; the flag exists in the jaxlib versions this guard names (an unknown
# flag aborts XLA, so no other version gets it). Simulated multi-device CPUs keep YNNPACK: there,
# with XLA's own kernels, the gradient of the generators' cycle loss compiled as one sharded program
# came out up to 2% away from the one-device value (tests/test_scaling.py), although each
# network's gradient compiled alone agreed to 3e-6 (YNNPACK, and one device: to 5e-6).
_XLA_CPU_LIBRARY_FLAG = '--xla_cpu_experimental_ynn_fusion_type'


def _prefer_xla_cpu_kernels() -> None:
  flags = os.environ.get('XLA_FLAGS', '')
  simulated = re.search(r'--xla_force_host_platform_device_count=(\d+)', flags)
  if _XLA_CPU_LIBRARY_FLAG in flags or (simulated and int(simulated.group(1)) > 1):
    return
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return
  if version.split('.')[:2] == ['0', '10']:
    os.environ['XLA_FLAGS'] = f'{flags} {_XLA_CPU_LIBRARY_FLAG}='.strip()


_prefer_xla_cpu_kernels()
