"""Building blocks of the official networks: conv -> norm -> activation, norms, inits, padding.

Each `ConvNormAct` holds a `conv` with `kernel` (HWIO; for transposed convs (kH, kW, out, in), as
a PyTorch ConvTranspose2d weight transposed) and, where the official network has one, `bias`;
with norm='batch' a sibling `norm` holds `scale` and `bias`. With spectral norm the kernel is
divided by its largest singular value where it is used (`spectral_norm`); the stored parameter is
the unnormalised kernel, as PyTorch's `weight_orig`.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cyclegan_jax import config_lib
from cyclegan_jax.models.fast_convs import ReformulatedConv
from cyclegan_jax.models.fast_convs import reformulates
from cyclegan_jax.models.fast_convs import spatial_sums
from cyclegan_jax.models.fast_convs import stride_2_reformulates
from cyclegan_jax.models.fast_convs import subpixel_padding

NORM_EPS = 1e-5
Dtype = Any
Padding = Sequence[tuple[int, int]]
VALID = ((0, 0), (0, 0))
ZERO_PAD_1 = ((1, 1), (1, 1))
# PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) as a conv over the
# stride-dilated input: pad k-1-padding = 1 before and 1 + output_padding = 2 after.
TRANSPOSED_PAD = ((1, 2), (1, 2))


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def kernel_initializer(init_type: str, init_gain: float) -> Callable:
  """Conv weight init of the official `init_weights` (untruncated normals)."""
  if init_type == 'normal':
    return nn.initializers.normal(stddev=init_gain)
  if init_type == 'xavier':
    return nn.initializers.variance_scaling(init_gain**2, 'fan_avg', 'normal')
  if init_type == 'kaiming':  # kaiming_normal_(a=0, mode='fan_in'): gain sqrt(2), ignores init_gain
    return nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
  if init_type == 'orthogonal':
    return nn.initializers.orthogonal(scale=init_gain)
  raise ValueError(f'init_type must be one of {config_lib.INIT_TYPES}, got {init_type!r}')


def instance_norm(x: jax.Array, by_matmuls: bool = False) -> jax.Array:
  """Per sample and channel over H, W; biased variance; no scale/shift. Stats in float32.

  `by_matmuls` (`fast_convs` on CPU) computes the statistics as matrix-vector products and the
  gradient in closed form: XLA's CPU reductions over H and W, fused with what produces their
  input, were the slowest ops of the 128 px train step (~6 ms for one 32 x 32 x 256 map)."""
  x32 = x.astype(jnp.float32)
  if by_matmuls:
    return _instance_norm_by_matmuls(x32).astype(x.dtype)
  mean = x32.mean(axis=(1, 2), keepdims=True)
  var = jnp.square(x32 - mean).mean(axis=(1, 2), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + NORM_EPS)).astype(x.dtype)


def _spatial_mean(x: jax.Array) -> jax.Array:
  """Mean over H and W of NHWC `x`, keeping dims, by `spatial_sums`' matrix-vector products."""
  _, height, width, _ = x.shape
  return spatial_sums(x, 1 / width, 1 / height)[:, None, None, :]


@jax.custom_vjp
def _instance_norm_by_matmuls(x: jax.Array) -> jax.Array:
  return _instance_norm_forward(x)[0]


def _instance_norm_forward(x):
  centred = x - _spatial_mean(x)
  inverse_std = jax.lax.rsqrt(_spatial_mean(jnp.square(centred)) + NORM_EPS)
  y = centred * inverse_std
  return y, (y, inverse_std)


def _instance_norm_backward(residuals, output_grad):
  y, inverse_std = residuals
  return (inverse_std *
          (output_grad - _spatial_mean(output_grad) - y * _spatial_mean(output_grad * y)),)


_instance_norm_by_matmuls.defvjp(_instance_norm_forward, _instance_norm_backward)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


# PyTorch BatchNorm2d's default momentum: each forward pass in train mode moves the running
# statistics this far towards the batch's (the variance unbiased, n / (n - 1)).
BATCH_NORM_MOMENTUM = 0.1


class BatchStatsNorm(nn.Module):
  """Batch norm as the official networks run it. Scale ~ N(1, init_gain), bias 0, as the official
  `init_weights` does for BatchNorm2d.

  Training (the default): normalises with the statistics of the current batch. When the
  'batch_stats' collection is mutable, the call also moves its running `mean` and `var` (made at
  init: 0 and 1) towards the batch's, as every forward pass of PyTorch's BatchNorm2d in train
  mode does (`BATCH_NORM_MOMENTUM`); otherwise no state is read or written.
  `per_image`: each image by its own statistics, which is what the official test.py computes, one
  image per batch (the default test mode, never switched to eval).
  `running_average`: normalises with the running statistics (test.py --eval), read from the
  'params' collection beside the scale and bias (`models.with_running_statistics`): a test-time
  network's parameters are then one pytree, as a PyTorch state_dict holds them.
  """
  init_gain: float = 0.02
  per_image: bool = False
  running_average: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    gain = self.init_gain
    scale = self.param('scale', lambda key, shape: 1.0 + gain * jax.random.normal(key, shape),
                       (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    x32 = x.astype(jnp.float32)
    if self.running_average:
      mean = self.param('mean', nn.initializers.zeros, (features,))
      var = self.param('var', nn.initializers.ones, (features,))
    elif self.per_image:
      return (instance_norm(x).astype(jnp.float32) * scale + bias).astype(x.dtype)
    else:
      mean = x32.mean(axis=(0, 1, 2))
      var = jnp.square(x32 - mean).mean(axis=(0, 1, 2))
      if self.is_mutable_collection('batch_stats'):
        running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
        running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
        if not self.is_initializing():
          count = x.shape[0] * x.shape[1] * x.shape[2]
          unbiased = jax.lax.stop_gradient(var) * (count / max(count - 1, 1))
          momentum = BATCH_NORM_MOMENTUM
          running_mean.value = ((1 - momentum) * running_mean.value +
                                momentum * jax.lax.stop_gradient(mean))
          running_var.value = (1 - momentum) * running_var.value + momentum * unbiased
    y = (x32 - mean) * jax.lax.rsqrt(var + NORM_EPS) * scale + bias
    return y.astype(x.dtype)


# Power iterations per use of a spectrally normalised kernel, each from the same fixed start.
SPECTRAL_NORM_ITERATIONS = 30


def spectral_norm(kernel: jax.Array,
                  transpose: bool = False,
                  iterations: int = SPECTRAL_NORM_ITERATIONS) -> jax.Array:
  """`kernel` divided by its largest singular value sigma, estimated by power iteration on the
  (out, in * kH * kW) matrix of the PyTorch weight, as torch.nn.utils.spectral_norm does: u and v
  are constants for the gradient, sigma = u^T W v is differentiated through W.

  Stateless: every use runs `iterations` steps from one fixed start vector, so the estimate is a
  deterministic function of the kernel (nothing to keep in the train state). The estimate never
  exceeds the largest singular value and converges to it (tests/test_models.py checks it against
  an SVD).
  """
  out_axis = 2 if transpose else 3  # HWIO, or (kH, kW, out, in) for transposed convs.
  matrix = jnp.moveaxis(kernel.astype(jnp.float32), out_axis, 0).reshape(kernel.shape[out_axis], -1)
  u = jax.random.normal(jax.random.key(0), (matrix.shape[0],), jnp.float32)

  def step(_, u):
    v = _unit(matrix.T @ u)
    return _unit(matrix @ v)

  u = jax.lax.stop_gradient(jax.lax.fori_loop(0, iterations, step, _unit(u)))
  v = jax.lax.stop_gradient(_unit(matrix.T @ u))
  sigma = u @ (matrix @ v)
  return (kernel / sigma).astype(kernel.dtype)


def _unit(vector: jax.Array) -> jax.Array:
  return vector / (jnp.linalg.norm(vector) + 1e-12)  # PyTorch's normalize eps.


class ConvNormAct(nn.Module):
  """[pre-activation] -> [reflect pad] -> conv or transposed conv (explicit zero padding) ->
  [norm] -> [activation]."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: Padding = VALID
  reflect_pad: int = 0
  transpose: bool = False
  norm: str = 'none'
  activation: Optional[Callable] = None
  pre_activation: Optional[Callable] = None
  use_bias: bool = True
  init_type: str = 'normal'
  init_gain: float = 0.02
  dtype: Dtype = jnp.float32
  fast_convs: bool = True
  norm_per_image: bool = False
  norm_running_average: bool = False
  spectral_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm not in config_lib.NORM_TYPES:
      raise ValueError(f'norm must be one of {config_lib.NORM_TYPES}, got {self.norm!r}')
    if self.pre_activation is not None:
      x = self.pre_activation(x)
    if self.reflect_pad:
      x = reflect_pad(x, self.reflect_pad)
    conv_args = dict(
        features=self.features,
        kernel_size=(self.kernel_size, self.kernel_size),
        strides=(self.strides, self.strides),
        padding=self.padding,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_initializer(self.init_type, self.init_gain),
        bias_init=nn.initializers.zeros,
    )
    padding = tuple(map(tuple, self.padding))
    torch_padding = (subpixel_padding(self.kernel_size, self.strides, padding)
                     if self.transpose else None)
    plain_stride_1 = self.strides == 1 and padding == VALID and not self.transpose
    # A zero-padded stride-1 conv that valid_conv reformulates: pad first, then it is VALID.
    if self.fast_convs and self.strides == 1 and not self.transpose and not plain_stride_1:
      padded_shape = (x.shape[0], x.shape[1] + sum(padding[0]), x.shape[2] + sum(padding[1]))
      kernel_shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
      if reformulates(padded_shape, kernel_shape, self.dtype):
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
        plain_stride_1 = True
    # A stride-2 conv with the same zero padding on every side, whose kernel gradient
    # `stride_2_conv` computes faster on CPU.
    stride_2_padding = None
    if self.fast_convs and self.strides == 2 and not self.transpose and len(
        {side for sides in padding for side in sides}) == 1:
      stride_2_padding = padding[0][0]
      kernel_shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
      if not stride_2_reformulates(x.shape, kernel_shape, stride_2_padding):
        stride_2_padding = None
    if self.fast_convs and (plain_stride_1 or torch_padding is not None or
                            stride_2_padding is not None):
      conv = functools.partial(ReformulatedConv,
                               self.features,
                               self.kernel_size,
                               self.transpose,
                               self.use_bias,
                               self.dtype,
                               conv_args['kernel_init'],
                               conv_args['bias_init'],
                               torch_padding or stride_2_padding or 0,
                               stride=1 if stride_2_padding is None else 2)
    elif self.transpose:
      # transpose_kernel=True: kernel is (kH, kW, out, in), the same axis order as a PyTorch
      # ConvTranspose2d weight after transpose(2, 3, 1, 0), and fan_in is computed as PyTorch does.
      conv = functools.partial(nn.ConvTranspose, transpose_kernel=True, **conv_args)
    else:
      conv = functools.partial(nn.Conv, **conv_args)
    if self.spectral_norm:
      transpose = self.transpose

      def normalized(variables):
        params = dict(variables.get('params', {}))
        if 'kernel' in params:
          params['kernel'] = spectral_norm(params['kernel'], transpose)
        return {**variables, 'params': params}

      conv = nn.map_variables(conv, 'params', normalized, init=self.is_initializing())
    x = conv(name='conv')(x)
    if self.norm == 'instance':
      x = instance_norm(x, by_matmuls=self.fast_convs and jax.default_backend() == 'cpu')
    elif self.norm == 'batch':
      x = BatchStatsNorm(self.init_gain,
                         self.norm_per_image,
                         self.norm_running_average,
                         name='norm')(x)
    if self.activation is not None:
      x = self.activation(x)
    return x
