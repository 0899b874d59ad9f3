"""The one definition of every config field, its default, and its validation.

Config files in `configs/` start from `base_config()` (the paper's recipe) and
change a few fields. `validate(config)` runs before any compute and raises
`ValueError` naming the offending field.
"""

import json
import math
import re

import ml_collections

from cyclegan_jax import errors

# Generators: 'resnet_<n>blocks' (n residual blocks) and 'unet_<n>' (n = 2 ** levels, the input
# side that the U-Net reduces to 1 x 1; the official UnetGenerator has at least 5 levels).
GENERATOR_PATTERNS = {
    'resnet': re.compile(r'^resnet_(\d+)blocks$'),
    'unet': re.compile(r'^unet_(\d+)$'),
}
UNET_MIN_DOWNS = 5
GENERATOR_HELP = ("expected 'resnet_<n>blocks' with n >= 1 (e.g. 'resnet_9blocks') or "
                  f"'unet_<n>' with n a power of two >= {2**UNET_MIN_DOWNS} (e.g. 'unet_256')")
DISCRIMINATOR_TYPES = ('basic', 'n_layers', 'pixel')
NORM_TYPES = ('instance', 'batch', 'none')
INIT_TYPES = ('normal', 'xavier', 'kaiming', 'orthogonal')
# 'cyclegan': unpaired, G: A -> B and F: B -> A, discriminators D_X and D_Y. 'pix2pix': paired
# (aligned data), G: A -> B alone and one conditional discriminator D judging concat(A, B).
MODEL_TYPES = ('cyclegan', 'pix2pix')
DATASET_MODES = ('unaligned', 'aligned')
DIRECTIONS = ('AtoB', 'BtoA')
GAN_MODES = ('lsgan', 'vanilla', 'wgangp', 'hinge')
LR_POLICIES = ('linear', 'step', 'cosine')
DATA_SOURCES = ('embedded', 'folder', 'tfds')
PREPROCESS_MODES = ('resize_and_crop', 'crop', 'scale_width', 'scale_width_and_crop', 'none')
# Modes whose output size depends on the image: batches need equal sizes, pools are impossible.
UNCROPPED_MODES = ('scale_width', 'none')
COMPUTE_DTYPES = ('float32', 'bfloat16')
# The networks of each model type's train state: (generators, discriminators).
MODEL_NETWORKS = {'cyclegan': (('G', 'F'), ('D_X', 'D_Y')), 'pix2pix': (('G',), ('D',))}
# Fields that may differ between the members of an ensemble (no array shape depends on them).
ENSEMBLE_MEMBER_FIELDS = ('seed', 'learning_rate', 'beta1', 'beta2', 'lambda_cycle',
                          'lambda_identity', 'use_gan_G', 'use_gan_F', 'use_cycle_forward',
                          'use_cycle_backward')
LOSS_SWITCHES = ('use_gan_G', 'use_gan_F', 'use_cycle_forward', 'use_cycle_backward')

# Fields that fix the shapes of the saved train state: a workdir whose saved config
# differs in any of them cannot be resumed with the new config.
ARCHITECTURE_FIELDS = (
    'model.generator',
    'model.discriminator',
    'model.n_layers_D',
    'model.ngf',
    'model.ndf',
    'model.norm',
    'model.channels_A',
    'model.channels_B',
    'pool_size',
    'data.crop_size',
)


def base_config() -> ml_collections.ConfigDict:
  """The paper's recipe (official defaults): 256 px, resnet_9blocks, 100 + 100 epochs."""
  config = ml_collections.ConfigDict()
  # 'cyclegan' (unpaired: two generators, two discriminators, the objective below) or 'pix2pix'
  # (paired: one generator, a conditional discriminator, GAN + lambda_L1 · L1; needs
  # data.dataset_mode='aligned'; configs/pix2pix_*.py and README, "pix2pix").
  config.model_type = 'cyclegan'

  # Reproducibility and duration.
  config.seed = 0  # Seeds parameter init, data order, augmentation and the image pools.
  config.batch_size = 1  # Global batch; must divide over the devices.
  config.num_epochs = 100  # Epochs at the constant initial learning rate.
  config.num_epochs_decay = 100  # Epochs over which the learning rate decays to zero.
  config.num_train_steps = -1  # > 0: stop after this many steps (the lr schedule is unchanged).

  # Optimiser (Adam for G+F jointly and for D_X+D_Y jointly).
  config.learning_rate = 2e-4
  config.beta1 = 0.5
  config.beta2 = 0.999
  # 'linear': constant, then the official per-epoch linear decay towards 0;
  # 'step': ×0.1 every `lr_decay_epochs` epochs; 'cosine': cosine decay to 0 over the run.
  config.lr_policy = 'linear'
  config.lr_decay_epochs = 50  # Only for lr_policy='step'.

  # Objective.
  # 'lsgan' (least squares; the paper's), 'vanilla' (BCE with logits), 'wgangp' (critic values
  # with the gradient penalty below) or 'hinge'.
  config.gan_mode = 'lsgan'
  config.lambda_gp = 10.0  # WGAN-GP's gradient penalty weight (gan_mode='wgangp' only).
  config.r1_gamma = 0.0  # R1 penalty on real images for both discriminators (0: off).
  # Exponential moving average of G's and F's weights, updated after every step (0: off; e.g.
  # 0.999). Kept in the train state; evaluation, samples, translate and export use it (their
  # --weights=raw the trained weights).
  config.ema_decay = 0.0
  config.lambda_cycle = 10.0  # λ_A = λ_B: weight of both cycle-consistency L1 terms.
  config.lambda_L1 = 100.0  # pix2pix only: weight of the L1 term |G(a) − b|₁.
  config.lambda_identity = 0.5  # Identity loss weight relative to λ (0 disables it).
  # Loss terms, switched off one by one for ablations (the paper's Table 4); all on is CycleGAN.
  # pix2pix reads use_gan_G only (off: L1 alone, D untrained), and has no identity loss.
  # A switched-off term is still computed and logged, but does not train anything; with its GAN
  # term off a discriminator is not trained either.
  config.use_gan_G = True  # G's adversarial loss: D_Y judges G(x).
  config.use_gan_F = True  # F's adversarial loss: D_X judges F(y).
  config.use_cycle_forward = True  # Forward cycle consistency: F(G(x)) ≈ x.
  config.use_cycle_backward = True  # Backward cycle consistency: G(F(y)) ≈ y.
  config.pool_size = 50  # Images kept in each fake-image pool (0 disables the pools).
  config.compute_dtype = 'float32'  # Activations' dtype; params and optimiser stay float32.

  config.model = ml_collections.ConfigDict()
  # 'resnet_<n>blocks' (9 for 256 px, 6 for 128 px) or 'unet_<n>' (U-Net of log2(n) levels:
  # 'unet_256', 'unet_128'; crops must be multiples of n).
  config.model.generator = 'resnet_9blocks'
  # 'basic' (70×70 PatchGAN), 'n_layers' (PatchGAN of n_layers_D strided layers) or 'pixel'
  # (1×1 PatchGAN: a score per pixel).
  config.model.discriminator = 'basic'
  config.model.n_layers_D = 3  # Strided layers of the 'n_layers' discriminator.
  config.model.ngf = 64  # Generator filters in the first conv layer.
  config.model.ndf = 64  # Discriminator filters in the first conv layer.
  config.model.norm = 'instance'  # 'instance', 'batch' (batch statistics) or 'none'.
  config.model.init_type = 'normal'  # 'normal', 'xavier', 'kaiming' or 'orthogonal'.
  config.model.init_gain = 0.02  # Std (normal) or gain (xavier, orthogonal) of the init.
  # Dropout(0.5) in the generators: in the middle levels of a U-Net, between the convs of each
  # ResNet block (the official --no_dropout negated; CycleGAN's default is off, pix2pix's on).
  config.model.use_dropout = False
  # Test time (evaluation, translate, export): False is the official test.py without --eval:
  # dropout on (outputs then depend on the seed), batch norm normalising each image by its own
  # statistics (test.py at batch size 1); True is test.py --eval: dropout off, batch norm with the
  # running statistics that training keeps (TrainState.batch_stats).
  config.model.eval_mode = False
  # Spectral normalisation of every discriminator conv (Miyato et al. 2018): each kernel divided
  # by its largest singular value, estimated by power iteration at every use (models/layers.py).
  config.model.spectral_norm = False
  # Channels of domain A (X) and B (Y) images, 1 or 3: G maps channels_A to channels_B (the official
  # code's input_nc and output_nc).
  config.model.channels_A = 3
  config.model.channels_B = 3
  # Exact faster formulations of slow convolutions (models/fast_convs.py) and, on CPU, of instance
  # norm's statistics (layers.instance_norm); False: plain lax convs and reductions.
  config.model.fast_convs = True

  config.data = ml_collections.ConfigDict()
  # 'tfds' (a prepared TFDS dataset), 'folder' (a folder or .zip of images) or 'embedded' (the
  # small offline dataset that ships with the package). See the README's "Data" section.
  config.data.source = 'tfds'
  config.data.tfds_name = 'cycle_gan/horse2zebra'  # TFDS source: dataset/config name.
  config.data.tfds_data_dir = ''  # TFDS source: data_dir ('' = TFDS's default or $TFDS_DATA_DIR).
  config.data.root = ''  # Folder source: folder or .zip holding trainA/ trainB/ [testA/ testB/].
  # 'unaligned' (CycleGAN's: trainA/, trainB/ drawn independently) or 'aligned' (pix2pix's: each
  # image of train/ [test/ or val/] holds A | B side by side, cropped and flipped together; the
  # embedded source: pairs a | hue_rotate_120(a)).
  config.data.dataset_mode = 'unaligned'
  config.data.direction = 'AtoB'  # 'BtoA' swaps domains A and B (the official --direction).
  # 'resize_and_crop', 'crop', 'scale_width', 'scale_width_and_crop' or 'none' (official modes).
  config.data.preprocess = 'resize_and_crop'
  config.data.load_size = 286  # Resize target (square, or the width for scale_width modes) ...
  config.data.crop_size = 256  # ... then a random crop of this size (multiple of 4).
  config.data.no_flip = False  # True disables the random horizontal flip.
  config.data.skip_bad_images = True  # Skip unreadable images with a warning (False: raise).
  config.data.num_heldout = 0  # Embedded source: held-out pairs to evaluate (0 = all).
  # Test images i of testA and testB show the same scene (aligned datasets: facades, maps):
  # evaluation then also reports paired metrics against them.
  config.data.paired_test = False
  config.data.num_workers = 0  # Decoding threads (0 = one per CPU core).
  config.data.prefetch = 4  # Batches prepared ahead of the train step (0 = no background work).

  # Ensembles (README, "Ensembles"; cyclegan_jax/ensemble.py): several runs in one program, each
  # in <workdir>/<name>. A member field holds comma-separated values, one per member (or one for
  # all): '0,1,2,3'. Empty everywhere: a single run.
  config.ensemble = ml_collections.ConfigDict()
  for field in ENSEMBLE_MEMBER_FIELDS:
    config.ensemble[field] = ''
  config.ensemble.names = ''  # The members' folder names, ':'-separated (default: their values).
  # Members vectorized together inside the step (0: 1 on CPU, all of a device's on GPU/TPU).
  config.ensemble.members_per_call = 0
  config.ensemble.fail_fast = False  # A member's non-finite loss stops all (default: only it).

  # Warm start (checkpointing.py): a new run takes these parts of another run's state.
  config.init_from = ''  # A workdir (latest checkpoint) or <workdir>/checkpoints/<step>.
  config.init_parts = 'G,F,D_X,D_Y'  # Any of G, F, D_X, D_Y, optimizer, pools, comma-separated.

  # Bookkeeping.
  config.log_every_steps = 100  # Console progress line and TensorBoard scalars.
  config.checkpoint_every_steps = 1000  # Also saved at the end of the run.
  config.keep_checkpoints = 3  # Most recent checkpoints kept on disk.
  config.plot_at_end = True  # Loss and metric curves in <workdir>/plots/ (matplotlib).
  config.sample_every_steps = 1000  # PNG grid of real / translated / reconstructed images.
  config.num_sample_images = 4  # Rows of that grid.
  config.eval_every_steps = 0  # Test-split evaluation (evaluation.py); 0 = at the end only.
  # FID Inception-v3 weights file (README, "Evaluate"); '' skips FID and KID.
  config.inception_weights = ''
  return config


def paper_dataset_config(name: str, paired_test: bool = False) -> ml_collections.ConfigDict:
  """The paper's recipe on one of the official datasets: TFDS `cycle_gan/<name>`.

  The recipe (`base_config`): 256 px crops of 286 px images, resnet_9blocks generators, 70x70
  PatchGAN discriminators, LSGAN + cycle (lambda 10) + identity (0.5), pools of 50, Adam 2e-4,
  100 + 100 epochs, batch 1.

  The data: TFDS `cycle_gan/<name>`, prepared once (README, "Data"), e.g. without TensorFlow
  `python -m cyclegan_jax.prepare_tfds --name=<name> --source=/path/to/<name>.zip`; or read the
  official zip (or its unpacked folder) directly with `--config.data.source=folder
  --config.data.root=/path/to/<name>.zip` (the default root is `datasets/<name>`).

  `paired_test`: the dataset's test images come in aligned pairs (facades and maps: testA/<n>_A.jpg
  shows the scene of testB/<n>_B.jpg), so evaluation adds MAE, PSNR and SSIM against them.
  """
  config = base_config()
  config.data.tfds_name = f'cycle_gan/{name}'
  config.data.root = f'datasets/{name}'
  config.data.paired_test = paired_test
  return config


def embedded_demo(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` on the embedded photos at the offline demos' size and schedule (configs/default.py,
  configs/pix2pix_default.py): 32 px crops, batch 4, learning rate 5e-4, 75 + 68 epochs of 14
  steps (2,002 steps), evaluations every 1,000 steps."""
  config.data.source = 'embedded'
  config.data.crop_size = 32
  config.model.ngf = 16
  config.model.ndf = 16
  config.learning_rate = 5e-4
  config.batch_size = 4
  config.num_epochs = 75
  config.num_epochs_decay = 68
  config.log_every_steps = 200
  config.checkpoint_every_steps = 500
  config.sample_every_steps = 500
  config.eval_every_steps = 1000
  config.num_sample_images = 8
  return config


def pix2pix_config() -> ml_collections.ConfigDict:
  """pix2pix's recipe (the official Pix2PixModel defaults): U-Net-256 with batch norm and dropout,
  the 70×70 PatchGAN on concat(A, B) with batch norm, vanilla GAN + λ_L1 = 100, no pool, Adam 2e-4
  (β 0.5, 0.999), batch 1, 286 px resized and 256 px cropped pairs, flipped, 100 + 100 epochs."""
  config = base_config()
  config.model_type = 'pix2pix'
  config.model.generator = 'unet_256'
  config.model.norm = 'batch'
  config.model.use_dropout = True
  config.gan_mode = 'vanilla'
  config.lambda_L1 = 100.0
  config.lambda_identity = 0.0
  config.pool_size = 0
  config.init_parts = 'G,D'
  config.data.dataset_mode = 'aligned'
  return config


def pix2pix_dataset_config(name: str,
                           direction: str,
                           epochs: int = 200,
                           batch_size: int = 1) -> ml_collections.ConfigDict:
  """pix2pix on one of its official datasets (`datasets/download_pix2pix_dataset.sh <name>` of the
  official repository), read from the extracted folder `datasets/<name>` (train/, test/ or val/):
  the paper's epochs and batch size, split as the official code into constant and linearly
  decaying halves."""
  config = pix2pix_config()
  config.data.source = 'folder'
  config.data.root = f'datasets/{name}'
  config.data.direction = direction
  config.batch_size = batch_size
  config.num_epochs = (epochs + 1) // 2
  config.num_epochs_decay = epochs // 2
  return config


def _fail(field: str, value, expected: str):
  raise errors.InvalidValueError(f'Invalid config.{field} = {value!r}: {expected}.')


def _require_choice(config, field: str, choices):
  value = _get(config, field)
  if value not in choices:
    _fail(field, value, f'expected one of {", ".join(map(repr, choices))}')


def _require_int(config, field: str, minimum: int):
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    _fail(field, value, f'expected an integer >= {minimum}')


def _require_number(config, field: str, minimum: float, strictly_greater: bool = False):
  value = _get(config, field)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > minimum if strictly_greater else value >= minimum)
  if not ok:
    _fail(field, value, f'expected a finite number {">" if strictly_greater else ">="} {minimum}')


def _get(config, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def parse_generator(name) -> tuple[str, int]:
  """('resnet', blocks) or ('unet', levels) of a generator name; InvalidValueError otherwise."""
  for kind, pattern in GENERATOR_PATTERNS.items():
    match = pattern.match(name) if isinstance(name, str) else None
    if match is None:
      continue
    number = int(match.group(1))
    if kind == 'resnet' and number >= 1:
      return kind, number
    if kind == 'unet' and number >= 2**UNET_MIN_DOWNS and number & (number - 1) == 0:
      return kind, number.bit_length() - 1
  _fail('model.generator', name, GENERATOR_HELP)


def discriminator_layers(model_config) -> int:
  """Strided layers of the discriminator (0 for 'pixel')."""
  return {'basic': 3, 'pixel': 0}.get(model_config.discriminator, model_config.n_layers_D)


def discriminator_output_size(image_size: int, n_layers: int) -> int:
  """Spatial size of the PatchGAN's score map (4×4 convs, zero padding 1); n_layers=0: the
  pixel discriminator's (1×1 convs)."""
  if n_layers == 0:
    return image_size
  size = image_size
  for _ in range(n_layers):
    size = (size + 2 - 4) // 2 + 1
  for _ in range(2):
    size = size + 2 - 4 + 1
  return size


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises ValueError naming the first invalid field of `config`."""
  _require_int(config, 'seed', 0)
  _require_int(config, 'batch_size', 1)
  if config.batch_size % num_devices:
    _fail('batch_size', config.batch_size,
          f'the global batch must divide evenly over the {num_devices} devices')
  _require_int(config, 'num_epochs', 0)
  _require_int(config, 'num_epochs_decay', 0)
  if config.num_epochs + config.num_epochs_decay == 0 and config.num_train_steps <= 0:
    _fail('num_epochs', config.num_epochs,
          'num_epochs + num_epochs_decay must be > 0 unless num_train_steps is set')
  if not isinstance(config.num_train_steps, int) or isinstance(config.num_train_steps, bool):
    _fail('num_train_steps', config.num_train_steps, 'expected an integer (<= 0 means derived)')

  _require_number(config, 'learning_rate', 0.0, strictly_greater=True)
  for field in ('beta1', 'beta2', 'ema_decay'):  # ema_decay 0: no moving average.
    value = config[field]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
      _fail(field, value, 'expected a number in [0, 1)')
  _require_choice(config, 'lr_policy', LR_POLICIES)
  _require_int(config, 'lr_decay_epochs', 1)

  _require_choice(config, 'gan_mode', GAN_MODES)
  _require_number(config, 'lambda_cycle', 0.0)
  _require_number(config, 'lambda_identity', 0.0)
  _require_number(config, 'lambda_gp', 0.0)
  _require_number(config, 'r1_gamma', 0.0)
  _require_number(config, 'lambda_L1', 0.0)
  _require_int(config, 'pool_size', 0)
  for field in LOSS_SWITCHES:
    if not isinstance(config[field], bool):
      _fail(field, config[field], 'expected True or False')
  _require_choice(config, 'model_type', MODEL_TYPES)
  if config.model_type == 'pix2pix':
    _validate_pix2pix(config)
  elif not any(config[field] for field in LOSS_SWITCHES) and config.lambda_identity == 0:
    _fail('use_gan_G', config.use_gan_G,
          'every loss term is switched off (use_gan_G/F, use_cycle_forward/backward and '
          'lambda_identity): nothing would be trained')
  _require_choice(config, 'compute_dtype', COMPUTE_DTYPES)

  model = config.model
  generator_kind, generator_number = parse_generator(model.generator)
  _require_choice(config, 'model.discriminator', DISCRIMINATOR_TYPES)
  _require_int(config, 'model.n_layers_D', 1)
  _require_int(config, 'model.ngf', 1)
  _require_int(config, 'model.ndf', 1)
  _require_choice(config, 'model.norm', NORM_TYPES)
  _require_choice(config, 'model.init_type', INIT_TYPES)
  _require_number(config, 'model.init_gain', 0.0, strictly_greater=True)
  _require_choice(config, 'model.channels_A', (1, 3))
  _require_choice(config, 'model.channels_B', (1, 3))
  if config.lambda_identity > 0 and model.channels_A != model.channels_B:
    _fail('lambda_identity', config.lambda_identity,
          'the identity loss needs model.channels_A == model.channels_B; set it to 0')

  data = config.data
  validate_data(data)
  if data.preprocess in UNCROPPED_MODES and config.pool_size > 0 and \
      data.source != 'embedded':
    _fail(
        'data.preprocess', data.preprocess,
        "images of varying size cannot share an image pool; use a cropping mode such as "
        "'resize_and_crop', or set pool_size=0")
  if generator_kind == 'unet':
    side = 2**generator_number
    if data.preprocess in UNCROPPED_MODES and data.source != 'embedded':
      _fail(
          'data.preprocess', data.preprocess,
          f'{model.generator} needs training images whose sides are multiples of {side}; '
          "use a cropping mode such as 'resize_and_crop'")
    if data.crop_size % side:
      _fail('data.crop_size', data.crop_size,
            f'{model.generator} needs a multiple of {side}; or choose a smaller U-Net')
  n_layers = discriminator_layers(model)
  if discriminator_output_size(data.crop_size, n_layers) < 1:
    _fail('data.crop_size', data.crop_size,
          f'too small for a discriminator with {n_layers} strided layers (no output patch left)')

  for field in ('log_every_steps', 'checkpoint_every_steps', 'sample_every_steps',
                'keep_checkpoints'):
    _require_int(config, field, 1)
  _require_int(config, 'num_sample_images', 0)
  _require_int(config, 'eval_every_steps', 0)
  if config.init_from:
    parse_init_parts(config.init_parts, config.model_type)
  for field in (*ENSEMBLE_MEMBER_FIELDS, 'names'):
    if not isinstance(config.ensemble[field], str):
      _fail(f'ensemble.{field}', config.ensemble[field],
            'expected comma-separated values in a string, e.g. "0,1,2,3"')
  _require_int(config, 'ensemble.members_per_call', 0)
  if not isinstance(config.ensemble.fail_fast, bool):
    _fail('ensemble.fail_fast', config.ensemble.fail_fast, 'expected True or False')


def _validate_pix2pix(config: ml_collections.ConfigDict) -> None:
  """What pix2pix needs beyond the shared checks (`validate`)."""
  if config.data.dataset_mode != 'aligned':
    _fail(
        'data.dataset_mode', config.data.dataset_mode,
        "pix2pix trains on pairs: set it to 'aligned' (images holding A | B side by side, the "
        'official pix2pix datasets; or the embedded source)')
  if config.pool_size:
    _fail('pool_size', config.pool_size,
          'pix2pix shows its discriminator the current fakes only (as the official code): set 0')
  if config.lambda_identity:
    _fail('lambda_identity', config.lambda_identity, 'pix2pix has no identity loss: set 0')
  if not config.use_gan_G and config.lambda_L1 == 0:
    _fail('lambda_L1', config.lambda_L1,
          'with use_gan_G=False the L1 term is the only loss: nothing would be trained')
  if any(str(config.ensemble[field]).strip() for field in ENSEMBLE_MEMBER_FIELDS):
    _fail(
        'model_type', config.model_type,
        'ensembles train CycleGANs only; run pix2pix variants one by one (experiments.sweep '
        'without --vectorize)')


def validate_data(data: ml_collections.ConfigDict) -> None:
  """Raises naming the first invalid field of a `config.data` section (`validate` runs it too)."""
  config = {'data': data}
  _require_choice(config, 'data.source', DATA_SOURCES)
  _require_choice(config, 'data.preprocess', PREPROCESS_MODES)
  _require_choice(config, 'data.dataset_mode', DATASET_MODES)
  _require_choice(config, 'data.direction', DIRECTIONS)
  if data.dataset_mode == 'aligned' and data.source == 'tfds':
    _fail(
        'data.dataset_mode', data.dataset_mode,
        "aligned data is read from a folder or .zip (train/ [test/ or val/] of A | B images, "
        "the official pix2pix datasets): set config.data.source='folder' and config.data.root")
  _require_int(config, 'data.crop_size', 4)
  if data.crop_size % 4:
    _fail('data.crop_size', data.crop_size, 'the generator needs a multiple of 4')
  _require_int(config, 'data.load_size', 1)
  if data.source != 'embedded' and data.preprocess in ('resize_and_crop',
                                                       'scale_width_and_crop') and \
      data.crop_size > data.load_size:
    _fail('data.crop_size', data.crop_size,
          f'must not exceed config.data.load_size = {data.load_size}')
  if data.source == 'folder' and not data.root:
    _fail('data.root', data.root,
          'the folder source needs a folder or .zip holding trainA/ and trainB/')
  if data.source == 'tfds' and not data.tfds_name:
    _fail('data.tfds_name', data.tfds_name, "the tfds source needs e.g. 'cycle_gan/horse2zebra'")
  _require_int(config, 'data.num_heldout', 0)
  _require_int(config, 'data.num_workers', 0)
  _require_int(config, 'data.prefetch', 0)


def init_parts_of(model_type: str) -> tuple[str, ...]:
  """The parts of a train state of `model_type` that a warm start can take."""
  generators, discriminators = MODEL_NETWORKS[model_type]
  pools = ('pools',) if model_type == 'cyclegan' else ()
  return (*generators, *discriminators, 'optimizer', *pools)


def parse_init_parts(init_parts: str, model_type: str = 'cyclegan') -> list[str]:
  """'G, F' -> ['G', 'F']; ValueError naming an unknown or repeated part."""
  parts = [part.strip() for part in init_parts.split(',') if part.strip()]
  known = init_parts_of(model_type)
  unknown = [part for part in parts if part not in known]
  if unknown or not parts:
    raise errors.InvalidValueError(
        f'Invalid config.init_parts = {init_parts!r}: expected a comma-separated '
        f'list of {", ".join(known)} (a {model_type} run\'s parts).')
  if len(set(parts)) != len(parts):
    raise errors.InvalidValueError(
        f'Invalid config.init_parts = {init_parts!r}: a part is named twice.')
  return parts


# Fields renamed since runs were first saved: old dotted name -> new one. A run's saved
# config.json is read with the new names (`upgrade_saved_config`); the old names are not accepted
# on the command line or in config files.
RENAMED_FIELDS = {
    'model.input_nc': 'model.channels_A',
    'model.output_nc': 'model.channels_B',
}


def upgrade_saved_config(saved: dict) -> dict:
  """A saved config (as a dict) with renamed fields under their new names."""
  upgraded = json.loads(json.dumps(saved))  # A deep copy.
  for old, new in RENAMED_FIELDS.items():
    old_parent, new_parent = upgraded, upgraded
    *old_path, old_leaf = old.split('.')
    *new_path, new_leaf = new.split('.')
    try:
      for part in old_path:
        old_parent = old_parent[part]
      for part in new_path:
        new_parent = new_parent.setdefault(part, {})
    except (KeyError, TypeError, AttributeError):
      continue
    if isinstance(old_parent, dict) and old_leaf in old_parent and isinstance(new_parent, dict):
      new_parent.setdefault(new_leaf, old_parent.pop(old_leaf))
  return upgraded


def architecture_mismatches(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Fields in ARCHITECTURE_FIELDS on which a saved config (as a dict) and `config` differ."""
  mismatches = []
  for field in ARCHITECTURE_FIELDS:
    saved_value = saved
    try:
      for part in field.split('.'):
        saved_value = saved_value[part]
    except (KeyError, TypeError):
      mismatches.append(f'{field}: missing in the saved config')
      continue
    current = _get(config, field)
    if saved_value != current:
      mismatches.append(f'{field}: saved {saved_value!r}, now {current!r}')
  # Runs saved before model_type existed are CycleGANs.
  saved_type = saved.get('model_type', 'cyclegan') if isinstance(saved, dict) else 'cyclegan'
  if saved_type != config.model_type:
    mismatches.append(f'model_type: saved {saved_type!r}, now {config.model_type!r}')
  # Whether the state keeps the generators' moving averages (runs from before the field: no).
  saved_decay = saved.get('ema_decay', 0.0) if isinstance(saved, dict) else 0.0
  if (saved_decay > 0) != (config.ema_decay > 0):
    mismatches.append(f'ema_decay: saved {saved_decay!r}, now {config.ema_decay!r} (on or off)')
  return mismatches
