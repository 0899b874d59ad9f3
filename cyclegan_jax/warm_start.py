"""Warm starts: a new run takes selected parts of another run's train state.

    --config.init_from=runs/monet --config.init_parts=G,F
    --config.init_from=runs/monet/checkpoints/40000 --config.init_parts=G,F,D_X,D_Y,optimizer,pools

`init_from` is a workdir (its latest checkpoint) or one checkpoint folder inside it
(`<workdir>/checkpoints/<step>`). `init_parts` names what is copied: any of the networks G, F,
D_X, D_Y, `optimizer` (both Adam states, whole: moments of all four networks and the step
counts) and `pools` (both fake-image pools). Everything else (the step, the RNG key, the
networks not named) starts fresh, and the new run's own schedule begins at step 0. A run that
already has checkpoints resumes from them and ignores `init_from`.
"""

from pathlib import Path
from typing import Any

import jax
import numpy as np

from cyclegan_jax import checkpointing
from cyclegan_jax import errors

NETWORK_PARTS = ('G', 'F', 'D_X', 'D_Y')


def locate(init_from: str | Path) -> tuple[Path, int | None]:
  """(workdir, step or None for the latest) of a workdir or `<workdir>/checkpoints/<step>`."""
  path = Path(init_from)
  if not path.exists():
    raise errors.PathNotFoundError(f'config.init_from = {str(init_from)!r} does not exist.')
  if path.name.isdigit() and path.parent.name == 'checkpoints':
    return path.parent.parent, int(path.name)
  return path, None


def _shape_mismatches(current: Any, source: Any, name: str) -> list[str]:
  current_shapes = {
      jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(current)
  }
  source_shapes = {
      jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(source)
  }
  problems = [
      f'{name}{path}: missing in the source' for path in current_shapes if path not in source_shapes
  ]
  problems += [
      f'{name}{path}: not in this run' for path in source_shapes if path not in current_shapes
  ]
  problems += [
      f'{name}{path}: shape {source_shapes[path]} in the source, {shape} here'
      for path, shape in current_shapes.items()
      if path in source_shapes and source_shapes[path] != shape
  ]
  return problems


def merge(state: Any, source: Any, parts: list[str]) -> Any:
  """`state` with the named parts taken from `source` (shapes must match exactly)."""
  selected = {}
  if any(part in NETWORK_PARTS for part in parts):
    selected['params'] = {
        name: source.params[name] if name in parts else state.params[name] for name in NETWORK_PARTS
    }
  if 'optimizer' in parts:
    selected['opt_state_generators'] = source.opt_state_generators
    selected['opt_state_discriminators'] = source.opt_state_discriminators
  if 'pools' in parts:
    selected['pool_A'], selected['pool_B'] = source.pool_A, source.pool_B
  problems = []
  for field, value in selected.items():
    problems += _shape_mismatches(getattr(state, field), value, field)
  if problems:
    raise errors.InvalidValueError(
        'config.init_from does not fit this run: ' + '; '.join(problems[:8]) +
        (f'; and {len(problems) - 8} more' if len(problems) > 8 else '') +
        '. The model and pool_size fields must match the source run for the parts '
        'in config.init_parts.')
  return state.replace(**selected)


def check_imported(workdir: Path, parts: list[str], init_from: str) -> None:
  """A workdir written by `convert` holds trained values only for the networks it imported."""
  imported = checkpointing.imported_networks(workdir)
  if imported is None:
    return
  missing = [part for part in parts if part not in imported]
  if missing:
    raise errors.InvalidValueError(
        f'config.init_from = {init_from!r} was converted from '
        f'{", ".join(sorted(set(imported.values())))} and holds only {", ".join(imported)}; it '
        f'has no trained {", ".join(missing)} to take (drop them from config.init_parts).')
