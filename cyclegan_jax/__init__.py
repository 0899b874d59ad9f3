"""CycleGAN (Zhu et al., ICCV 2017) in JAX/Flax: unpaired image-to-image translation."""

import importlib.metadata
import os
import re
import sys
from typing import Mapping, Sequence

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


# XLA's CPU runtime allocates each call's temporary buffers as one block (787 MiB for the 128 px
# train step, 2.5 GiB for the 256 px one) and frees it at the end of the call; glibc maps such
# blocks afresh each time, so every call touches hundreds of thousands of new 4 KiB pages: 200,000
# page faults and a seventh of the 128 px step's CPU time. Where the kernel gives transparent huge
# pages only to memory that asks for them (the `madvise` mode, common on Debian and Ubuntu),
# glibc >= 2.35 asks for them when the GLIBC_TUNABLES entry below is set, which glibc reads only
# when a process starts: so a command of this package (`python -m cyclegan_jax.<command>`)
# re-executes itself once, with the same arguments and process id, with it added (measured: the
# 128 px step 1.25 -> 1.11-1.16 s, the 256 px step 5.9 -> 5.5 s; README, "Results"). Nothing
# else is re-executed (a library import, pytest, a debugger), and a GLIBC_TUNABLES that already
# names the entry is kept as it is: `glibc.malloc.hugetlb=0` turns this off.
_HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _transparent_huge_page_mode() -> str | None:
  try:
    with open(_THP_MODE_FILE) as file:
      chosen = re.search(r'\[(\w+)\]', file.read())
  except OSError:
    return None
  return chosen.group(1) if chosen else None


def _libc_version() -> str:
  try:
    return os.confstr('CS_GNU_LIBC_VERSION') or ''
  except (ValueError, OSError, AttributeError):  # Not glibc, or no confstr (not Linux).
    return ''


def _module_run(argv: Sequence[str]) -> str | None:
  """The module of `python [options] -m <module> ...`, else None (a script, -c, stdin)."""
  position = 1
  while position < len(argv) - 1:
    argument = argv[position]
    if argument == '-m':
      return argv[position + 1]
    if argument in ('-c', '-') or not argument.startswith('-'):
      return None
    position += 2 if argument in ('-X', '-W', '--check-hash-based-pycs') else 1
  return None


def huge_page_environment(argv: Sequence[str], environ: Mapping[str, str], thp_mode: str | None,
                          libc_version: str) -> dict[str, str] | None:
  """The environment to re-execute `argv` with so that glibc's malloc gives its large blocks
  transparent huge pages, or None where that would change nothing: not a `python -m
  cyclegan_jax.<command>` process, the entry already in GLIBC_TUNABLES, a kernel that gives huge
  pages to all memory or to none (thp_mode not 'madvise'), or a libc other than glibc >= 2.35."""
  if not (_module_run(argv) or '').startswith('cyclegan_jax.'):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if _HUGE_PAGES_TUNABLE in tunables or thp_mode != 'madvise':
    return None
  libc = re.fullmatch(r'glibc (\d+)\.(\d+).*', libc_version)
  if not libc or (int(libc.group(1)), int(libc.group(2))) < (2, 35):
    return None
  added = ':'.join(filter(None, [tunables, f'{_HUGE_PAGES_TUNABLE}=1']))
  return {**environ, 'GLIBC_TUNABLES': added}


def _reexecute_with_huge_pages() -> None:
  argv = getattr(sys, 'orig_argv', [])
  if len(argv) < 3 or not sys.platform.startswith('linux'):
    return
  environ = huge_page_environment(argv, os.environ, _transparent_huge_page_mode(), _libc_version())
  if environ is None or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *argv[1:]], environ)
  except OSError:  # Run on without: the same results, only slower.
    pass


_reexecute_with_huge_pages()
