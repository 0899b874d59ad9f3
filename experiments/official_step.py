"""Times the official PyTorch CycleGAN's train step (or generator inference) on random images.

    OFFICIAL_REPO=/path/to/pytorch-CycleGAN-and-pix2pix
    python experiments/official_step.py --official_repo=$OFFICIAL_REPO --device=cuda
    python experiments/official_step.py --official_repo=$OFFICIAL_REPO --device=cpu --threads=2
    python experiments/official_step.py --official_repo=$OFFICIAL_REPO --netG=resnet_6blocks \\
        --crop_size=128                                                   # the 128 px recipe
    python experiments/official_step.py --official_repo=$OFFICIAL_REPO --inference

The counterpart of `python -m cyclegan_jax.benchmark` for the authors' code, which is imported
from `--official_repo` (a checkout of junyanz/pytorch-CycleGAN-and-pix2pix; nothing of it is
copied here). It needs torch; the model's options are the official training defaults, read from
the checkout's own `TrainOptions` and CycleGAN option setter (resnet_9blocks, ngf 64, basic
discriminator with 3 layers, instance norm, no dropout, lambda_identity 0.5, pools of 50, LSGAN,
batch 1, crop 256, Adam 2e-4 with beta1 0.5), with only `--netG`, `--crop_size` and `--batch_size`
changed on request. The step timed is `CycleGANModel.optimize_parameters()` after
`set_input({'A', 'B', 'A_paths', 'B_paths'})` of one fixed batch of uniform random images in
[-1, 1], as `train.py` calls it (data loading excluded, as in our benchmark); `--warmup` untimed
steps first (cuDNN autotuning), then `--steps` timed ones, each ended by a device synchronize.

Prints one line of `official: key=value ...` (median / min / max step time, examples/s, peak RSS
of the process and, on CUDA, `torch.cuda.max_memory_allocated`) and a last line
`step_time_s=<median>`, as the benchmark does.
"""

import argparse
import contextlib
import io
import os
import resource
import statistics
import subprocess
import sys
import time
import types


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_repo',
                      default=os.environ.get('OFFICIAL_REPO'),
                      help='Checkout of the official code (default: $OFFICIAL_REPO).')
  parser.add_argument('--official_commit',
                      default=None,
                      help='Its commit, for the result line (default: read with git; a copy '
                      'without .git needs this flag to be named).')
  parser.add_argument('--device', default='auto', help="'cpu', 'cuda', 'cuda:1', or 'auto'.")
  parser.add_argument('--threads',
                      type=int,
                      default=0,
                      help='torch.set_num_threads on CPU (0: torch default).')
  parser.add_argument('--steps', type=int, default=10, help='Timed steps.')
  parser.add_argument('--warmup', type=int, default=2, help='Untimed steps first.')
  parser.add_argument('--inference',
                      action='store_true',
                      help='Time G_A(A) under no_grad instead of the train step.')
  parser.add_argument('--netG', default=None, help='Official --netG (default: its default).')
  parser.add_argument('--crop_size', type=int, default=None, help='Official --crop_size.')
  parser.add_argument('--batch_size', type=int, default=None, help='Official --batch_size.')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if not args.official_repo:
    parser.error('give --official_repo or set OFFICIAL_REPO')
  return args


def import_official(repo: str):
  """The official packages `options`, `models` from `repo` (first on sys.path)."""
  if not os.path.isfile(os.path.join(repo, 'models', 'cycle_gan_model.py')):
    raise SystemExit(f'{repo} is not a checkout of the official CycleGAN code '
                     '(no models/cycle_gan_model.py)')
  sys.path.insert(0, os.path.abspath(repo))
  try:
    import data  # pylint: disable=import-outside-toplevel,unused-import
  except Exception as error:  # pylint: disable=broad-except
    # options/base_options.py imports the official `data` package (which needs a working
    # torchvision) only to gather dataset options from the command line, which is not done here.
    print(
        f'official_step: the official data package does not import ({error!r}); options are '
        'read without it',
        file=sys.stderr)
    sys.modules['data'] = types.ModuleType('data')
  import models  # pylint: disable=import-outside-toplevel
  from options.train_options import TrainOptions  # pylint: disable=import-outside-toplevel
  return models, TrainOptions


def official_options(models, TrainOptions, args, device):  # pylint: disable=invalid-name
  """The official training defaults for `--model cycle_gan`, as `TrainOptions().parse()` would
  produce them, without parsing sys.argv, printing or creating the checkpoints folder."""
  import torch  # pylint: disable=import-outside-toplevel
  parser = TrainOptions().initialize(argparse.ArgumentParser())
  parser = models.get_option_setter('cycle_gan')(parser, True)
  command_line = ['--dataroot', 'unused', '--model', 'cycle_gan']
  for name in ('netG', 'crop_size', 'batch_size'):
    if getattr(args, name) is not None:
      command_line += [f'--{name}', str(getattr(args, name))]
  opt = parser.parse_args(command_line)
  opt.isTrain = True
  opt.device = device  # Set by util.init_ddp() in today's train.py.
  opt.gpu_ids = [device.index or 0] if device.type == 'cuda' else []  # Older versions' field.
  if device.type == 'cuda':
    torch.cuda.set_device(device)
  return opt


def repo_commit(repo: str) -> str:
  try:
    return subprocess.run(['git', '-C', repo, 'rev-parse', '--short', 'HEAD'],
                          check=True,
                          capture_output=True,
                          text=True).stdout.strip() or 'unknown'
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def main(argv=None):
  args = parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  if args.device == 'auto':
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  else:
    device = torch.device(args.device)
  if device.type == 'cuda' and device.index is None:
    device = torch.device('cuda', torch.cuda.current_device())
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  models, TrainOptions = import_official(args.official_repo)  # pylint: disable=invalid-name
  opt = official_options(models, TrainOptions, args, device)

  start = time.perf_counter()
  construction_output = io.StringIO()  # The official code prints the networks and devices.
  with contextlib.redirect_stdout(construction_output):
    model = models.create_model(opt)
    model.setup(opt)
  setup_s = time.perf_counter() - start

  shape = (opt.batch_size, opt.input_nc, opt.crop_size, opt.crop_size)
  images = {
      'A': torch.rand(shape) * 2 - 1,
      'B': torch.rand((opt.batch_size, opt.output_nc, opt.crop_size, opt.crop_size)) * 2 - 1,
      'A_paths': [f'random_A_{i}.png' for i in range(opt.batch_size)],
      'B_paths': [f'random_B_{i}.png' for i in range(opt.batch_size)],
  }
  model.set_input(images)
  synchronize = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

  if args.inference:
    generator = model.netG_A

    def call():
      with torch.no_grad():
        generator(model.real_A)
  else:
    call = model.optimize_parameters

  for _ in range(args.warmup):
    call()
  synchronize()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    call()
    synchronize()
    times.append(time.perf_counter() - start)

  median = statistics.median(times)
  if device.type == 'cuda':
    device_kind = torch.cuda.get_device_name(device)
  else:
    device_kind = 'cpu'
  results = {
      'workload': 'generator_inference' if args.inference else 'train_step',
      'framework': 'official_pytorch',
      'official_commit': args.official_commit or repo_commit(args.official_repo),
      'torch': torch.__version__,
      'platform': 'gpu' if device.type == 'cuda' else 'cpu',
      'device_kind': device_kind.replace(' ', '_'),
      'devices': 1,
      'threads': torch.get_num_threads(),
      'generator': opt.netG,
      'ngf': opt.ngf,
      'discriminator': opt.netD,
      'n_layers_D': opt.n_layers_D,
      'norm': opt.norm,
      'lambda_identity': opt.lambda_identity,
      'pool_size': opt.pool_size,
      'gan_mode': opt.gan_mode,
      'crop_size': opt.crop_size,
      'batch_size': opt.batch_size,
      'compute_dtype': 'float32',
      'setup_s': setup_s,
      'step_time_median_s': median,
      'step_time_min_s': min(times),
      'step_time_max_s': max(times),
      'examples_per_s': opt.batch_size / median,
      'members': 1,
      'member_steps_per_s': 1 / median,
      'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  }
  if device.type == 'cuda':
    results['device_peak_gib'] = torch.cuda.max_memory_allocated(device) / 2**30
  print('official: ' +
        ' '.join(f'{key}={value:.6g}' if isinstance(value, float) else f'{key}={value}'
                 for key, value in results.items()))
  print(f'step_time_s={median:.6f}', flush=True)


if __name__ == '__main__':
  main()
