"""Paired metrics on held-out data with ground truth (MAE and PSNR on a 0–255 scale)."""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def to_255(images: jax.Array) -> jax.Array:
  """[-1, 1] floats to the 0–255 scale of saved images (clipped, not quantised)."""
  return (jnp.clip(images.astype(jnp.float32), -1.0, 1.0) + 1.0) * 127.5


def paired_errors(prediction: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
  """Per-image MAE and PSNR (dB) of [-1, 1] batches, measured on the 0–255 scale."""
  difference = to_255(prediction) - to_255(target)
  axes = tuple(range(1, difference.ndim))
  mae = jnp.mean(jnp.abs(difference), axis=axes)
  mse = jnp.mean(jnp.square(difference), axis=axes)
  psnr = 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-10))
  return {'mae': mae, 'psnr': psnr}


def batched(fn: Callable[[jax.Array], jax.Array], images: np.ndarray,
            batch_size: int) -> np.ndarray:
  """Applies `fn` over `images` in fixed-size chunks (the last one padded) to compile once."""
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    outputs.append(np.asarray(fn(chunk))[:batch_size - pad])
  return np.concatenate(outputs)


def heldout_metrics(translate_AtoB: Callable, translate_BtoA: Callable,
                    pairs: dict[str, np.ndarray], batch_size: int = 16) -> dict[str, float]:
  """G(a) against the true b and F(b) against the true a, next to the untranslated baseline."""
  real_A, real_B = pairs['A'], pairs['B']
  fake_B = batched(translate_AtoB, real_A, batch_size)
  fake_A = batched(translate_BtoA, real_B, batch_size)
  results = {}
  for direction, prediction, source, target in (('AtoB', fake_B, real_A, real_B),
                                                ('BtoA', fake_A, real_B, real_A)):
    model = paired_errors(prediction, target)
    if source.shape[-1] == target.shape[-1]:
      baseline = paired_errors(source, target)
      results[f'baseline_mae_{direction}'] = float(jnp.mean(baseline['mae']))
      results[f'baseline_psnr_{direction}'] = float(jnp.mean(baseline['psnr']))
    results[f'heldout_mae_{direction}'] = float(jnp.mean(model['mae']))
    results[f'heldout_psnr_{direction}'] = float(jnp.mean(model['psnr']))
  return results
