"""Ensembles: several CycleGAN runs trained by one compiled program, each in its own run folder.

    python -m cyclegan_jax.main --config=configs/default.py --workdir=runs/seeds \\
        --config.ensemble.seed=0,1,2,3

The member fields (`MEMBER_FIELDS`: the seed and `state.HYPERPARAMETERS`) may differ between the
members, as comma-separated values in `config.ensemble.<field>`: one value per member, or a single
value for all (every list given has the member count's length). Everything else (architecture,
crop, batch, GAN mode, pool size, schedule lengths) is shared: those change array shapes or the
program. Member k trains in `<workdir>/<name k>` exactly as `python -m cyclegan_jax.main` would
with the member's values (its config.json holds them), so every command reads a member's folder as
a run of its own; names come from `config.ensemble.names` (separated by ':', as a name may hold
commas) or from the member's values (`seed=1,lambda_cycle=5.0`).

How members meet the compiled step (`SlotLayout`): in slots, each one call of the step. With
one member per call on a single device (the default on CPU, where convolutions vectorized over
per-member weights become grouped convolutions that XLA's CPU backend runs many times slower than
separate ones), a slot is one member, and the program is exactly a single run's, called once per
member: a member then equals its own run bitwise. Otherwise the members of a slot are stacked on a
leading axis, laid out on a `member` mesh axis first with each member's batch over the rest
(`member_mesh`), and each device runs the train step of its `members_per_call` members
(vectorized with `jax.vmap` when more than one: all of a device's members by default on GPU/TPU,
where they fill the device). The hyperparameters are arguments of the step in every case
(`state.split_hyperparams`), so one compiled program serves every member.
"""

import dataclasses
import functools
import math
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from cyclegan_jax import config_lib
from cyclegan_jax import errors

MEMBER_FIELDS = config_lib.ENSEMBLE_MEMBER_FIELDS  # The seed and state.HYPERPARAMETERS.
_SAFE_NAME = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9._,=+-]*$')


@dataclasses.dataclass(frozen=True)
class Member:
  name: str  # Its run folder, below the ensemble's workdir.
  config: ml_collections.ConfigDict  # The member's whole config (no ensemble fields set).
  values: dict[str, Any]  # Its member fields, where the members differ.


def is_ensemble(config: ml_collections.ConfigDict) -> bool:
  return any(str(config.ensemble[field]).strip() for field in MEMBER_FIELDS)


def _parse(field: str, text: str, kind: type) -> list[Any]:
  values = []
  for item in text.split(','):
    item = item.strip()
    try:
      if kind is bool:
        if item.lower() not in ('true', 'false', '1', '0'):
          raise ValueError(item)
        values.append(item.lower() in ('true', '1'))
      else:
        values.append(kind(item))
    except ValueError:
      raise errors.InvalidValueError(
          f'Invalid config.ensemble.{field} = {text!r}: {item!r} is not a {kind.__name__}; give '
          f'one value per member, comma-separated (e.g. 0,1,2,3)') from None
  return values


def _name_value(value: Any) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def members(config: ml_collections.ConfigDict) -> list[Member]:
  """The members that config.ensemble describes; a user error naming the field if they do not
  fit (uneven lists, values of the wrong type, names that clash or are not folder names)."""
  lists = {}
  for field in MEMBER_FIELDS:
    text = str(config.ensemble[field]).strip()
    if text:
      lists[field] = _parse(field, text, type(config[field]))
  names_text = str(config.ensemble.names).strip()
  names = [name.strip() for name in names_text.split(':')] if names_text else []
  count = max([len(values) for values in lists.values()] + [len(names), 1])
  for field, values in lists.items():
    if len(values) not in (1, count):
      raise errors.InvalidValueError(
          f'Invalid config.ensemble.{field}: {len(values)} values for {count} members; give one '
          'value per member, or one for all')
  if names and len(names) != count:
    raise errors.InvalidValueError(
        f'Invalid config.ensemble.names: {len(names)} names for {count} members')
  varying = [field for field, values in lists.items() if len(set(values)) > 1]
  result = []
  for k in range(count):
    member_config = config.copy_and_resolve_references()
    values = {}
    for field, field_values in lists.items():
      value = field_values[k if len(field_values) > 1 else 0]
      member_config[field] = value
      if field in varying:
        values[field] = value
    for field in MEMBER_FIELDS:
      member_config.ensemble[field] = ''
    member_config.ensemble.names = ''
    name = names[k] if names else ','.join(f'{f}={_name_value(v)}' for f, v in values.items())
    name = name or f'member_{k}'
    if not _SAFE_NAME.match(name) or name in ('.', '..'):
      raise errors.InvalidValueError(
          f'Invalid config.ensemble.names: {name!r} is not a folder name (use letters, digits and '
          '. _ , = + -)')
    config_lib.validate(member_config, num_devices=1)
    result.append(Member(name, member_config, values))
  folded = [member.name.casefold() for member in result]
  if len(set(folded)) != len(folded):
    raise errors.InvalidValueError(
        f'Invalid config.ensemble.names: two members would share a folder ({", ".join(folded)})')
  return result


def member_mesh(num_members: int,
                batch_size: int,
                devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ('member', 'data') mesh: the members over as many devices as divide both counts, each
  member's batch over the rest (8 devices: 8 members at batch 1 -> (8, 1); 4 members at batch 2
  -> (4, 2); 16 members -> (8, 1), two per device)."""
  devices = jax.devices() if devices is None else devices
  member_axis = math.gcd(num_members, len(devices))
  data_axis = len(devices) // member_axis
  if batch_size % data_axis:
    raise errors.InvalidValueError(
        f'Invalid config.batch_size = {batch_size}: {num_members} members on {len(devices)} '
        f'devices leave {data_axis} devices per member, and the batch must divide over them; '
        f'use a batch of a multiple of {data_axis}, or a member count that {len(devices)} '
        'devices divide')
  return jax.sharding.Mesh(np.asarray(devices).reshape(member_axis, data_axis), ('member', 'data'),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)


def members_per_call(config: ml_collections.ConfigDict, local_members: int) -> int:
  """Members vectorized together on a device: config.ensemble.members_per_call, or by default
  one on CPU (separate convolutions) and all of a device's members elsewhere."""
  chosen = config.ensemble.members_per_call
  if chosen <= 0:
    chosen = 1 if jax.default_backend() == 'cpu' else local_members
  chosen = min(chosen, local_members)
  while local_members % chosen:
    chosen -= 1
  return chosen


@dataclasses.dataclass(frozen=True)
class SlotLayout:
  """How the members meet the compiled step: in slots, each one call of the step, holding
  `members_per_call` members on each device of the 'member' mesh axis (members k of a slot in
  order, as the slot's stacked state holds them). With one member per device: one slot. With one
  member per slot (`stacked` False; one CPU), a slot is that member's own state and batch, and
  the step is that of a single run."""
  members_per_call: int
  slots: tuple[tuple[int, ...], ...]

  @property
  def stacked(self) -> bool:
    return len(self.slots[0]) > 1

  def position(self, k: int) -> tuple[int, int]:
    """(slot, place in the slot) of member k."""
    size = len(self.slots[0])
    return k // size, k % size


def slot_layout(config: ml_collections.ConfigDict, num_members: int,
                mesh: jax.sharding.Mesh) -> SlotLayout:
  groups = mesh.shape['member']
  per_call = members_per_call(config, num_members // groups)
  size = groups * per_call
  return SlotLayout(
      per_call, tuple(tuple(range(start, start + size)) for start in range(0, num_members, size)))


def member_of(slots: Any, layout: SlotLayout, k: int) -> Any:
  """Member k of a tuple of slots (state, metrics)."""
  if not layout.stacked:
    return slots[k]
  slot, place = layout.position(k)
  return member_slice(slots[slot], place)


def to_slots(trees: list[Any], layout: SlotLayout) -> tuple[Any, ...]:
  """One tree per member (on the host) -> a tree per slot, stacked if the layout is."""
  if not layout.stacked:
    return tuple(trees)
  return tuple(stack([trees[k] for k in members]) for members in layout.slots)


def member_slice(tree: Any, k: int) -> Any:
  """Member k of a stacked tree (numpy stays numpy). Device arrays are sliced in one program,
  finished before this returns: indexed leaf by leaf, a tree sharded over several devices would
  put one program per leaf in flight at once, each with its own collective, and on CPU devices
  such programs can hold every thread of the runtime while waiting for each other (a deadlock).
  """
  if not any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(tree)):
    return jax.tree.map(lambda x: x[k], tree)
  return jax.block_until_ready(_member_slice(tree, k))


@functools.partial(jax.jit, static_argnums=1)
def _member_slice(tree: Any, k: int) -> Any:
  return jax.tree.map(lambda x: x[k], tree)


def stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)
