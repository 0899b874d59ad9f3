"""The training loop: a run (or an ensemble's members) from its workdir to its final evaluation.

`train_and_evaluate` validates the config, finds the data, takes the workdir's lock, resumes from
the newest intact checkpoint (or starts fresh, warm-started where config.init_from says), then
steps the compiled trainer (`train.build_trainer`), logging, sampling, evaluating and
checkpointing as the config says, until the run's last step or a stop signal.
"""

import collections
import contextlib
import dataclasses
import functools
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from cyclegan_jax import checkpointing
from cyclegan_jax import config_lib
from cyclegan_jax import data
from cyclegan_jax import ensemble
from cyclegan_jax import errors
from cyclegan_jax import evaluation
from cyclegan_jax import state as state_lib
from cyclegan_jax import summaries
from cyclegan_jax import train
from cyclegan_jax import workdir as workdir_lib

# The progress line's losses (label, metric), those the model has: CycleGAN's, pix2pix's.
LOGGED_LOSSES = (('G', 'loss/gan_G'), ('F', 'loss/gan_F'), ('cycle_A', 'loss/cycle_A'),
                 ('cycle_B', 'loss/cycle_B'), ('L1', 'loss/L1'), ('D_X', 'loss/D_X'),
                 ('D_Y', 'loss/D_Y'), ('D', 'loss/D'))


# Steps dispatched ahead of the last one known to be done: the host prepares the next batches while
# the device computes, and a stop request or a non-finite loss waits for at most this many steps.
MAX_STEPS_IN_FLIGHT = 2


def sum_in_order(trees: list[Any]) -> Any:
  """The leafwise sum of host trees, added one after the other in their dtype (float32 metrics
  sum exactly as the same additions on the device would)."""
  return functools.reduce(lambda total, tree: jax.tree.map(np.add, total, tree), trees)


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays laid out by `sharding` over all devices."""
  return jax.tree.map(lambda rows: jax.make_array_from_process_local_data(sharding, rows),
                      local_batch)


class _StopRequest:
  """Turns SIGTERM/SIGINT into a request to checkpoint and stop at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested:  # A second signal: stop now.
      raise KeyboardInterrupt(f'signal {signum}')
    logging.warning('Signal %d: saving a checkpoint and stopping after this step.', signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _check_finite(step: int, run: '_Member', fail_fast: bool) -> None:
  """Stops the run (fail_fast: the program) on a non-finite loss; its checkpoints stay."""
  bad = [k for k, v in run.last_metrics.items() if not math.isfinite(v)]
  if not bad:
    return
  message = (f'Non-finite {", ".join(bad)} at step {step}. The checkpoints in '
             f'{workdir_lib.checkpoint_dir(run.workdir)} are untouched; lower the learning rate '
             'or check the data.')
  if fail_fast:
    raise errors.DivergedError(message)
  run.failure = f'{run.name}: {message}'
  logging.error('Member %s stopped (the others go on). %s', run.name, message)
  if jax.process_index() == 0:
    latest = run.manager.latest_step()
    workdir_lib.write_json(run.workdir / workdir_lib.FAILURE_FILE, {
        'step': step,
        'error': message,
        'last_checkpoint': latest
    })


def _plot(workdir: Path) -> None:
  """Loss and metric curves as PNGs in the workdir; a plotting problem never fails the run."""
  try:
    from cyclegan_jax import plots  # pylint: disable=g-import-not-at-top  # matplotlib is slow.
    plots.plot_run(workdir)
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('Could not draw the plots in %s: %s', workdir / workdir_lib.PLOTS_DIR, error)


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _set_aside_damaged(manager, workdir: Path, damaged: list[int], keep: int):
  """Moves the damaged newer checkpoints out of checkpoints/ (kept) so their steps can be saved
  again, and returns a manager that no longer lists them."""
  manager.close()
  _sync_processes('checkpoints read')  # No process reads them any more.
  if jax.process_index() == 0:
    moved = checkpointing.set_aside(workdir, damaged)
    logging.warning(
        'Resuming from the newest intact checkpoint. The damaged one(s) are kept in %s.',
        ', '.join(map(str, moved)))
  _sync_processes('damaged checkpoints set aside')
  return checkpointing.create_manager(workdir, keep)


@contextlib.contextmanager
def exclusive_workdirs(workdirs: list[Path]):
  """Holds the workdirs' locks (`workdir.WorkdirLock`) for the run, on process 0 of all the run's
  processes, which share them; every process raises WorkdirBusyError if one is taken."""
  locks = [workdir_lib.WorkdirLock(workdir) for workdir in workdirs]
  busy = None
  if jax.process_index() == 0:
    try:
      for lock in locks:
        lock.acquire()
    except errors.WorkdirBusyError as error:
      busy = error
      for lock in locks:
        lock.release()
  if jax.process_count() > 1:
    free = bool(multihost_utils.broadcast_one_to_all(np.int32(busy is None)))
    if not free and busy is None:
      busy = errors.WorkdirBusyError(
          f'{workdirs[0]} is in use by another run (process 0 says which).')
  if busy is not None:
    raise busy
  try:
    yield
  finally:
    for lock in locks:
      lock.release()


# The train step on this project's two 2-core CPUs (jax 0.10.2, float32, batch 1, ngf 64, the
# default fast_convs; README, "Speed against the official PyTorch code"), taken between them: at
# 256 px 5.2 s on the AVX-512 Xeon and 9.9 s on the AVX2 EPYC, at 128 px 1.15 s and 2.1 s.
# generator -> (crop size, seconds per step).
CPU_STEP_ANCHORS = {'resnet_9blocks': (256, 7.0), 'resnet_6blocks': (128, 1.6)}
CPU_ANCHOR_CORES = 2
# A run found on CPU devices alone warns when its estimated step takes at least this long.
CPU_WARNING_SECONDS = 1.0


def cpu_seconds_per_step(generator: str,
                         ngf: int,
                         crop_size: int,
                         batch_size: int,
                         members: int = 1,
                         cores: int = CPU_ANCHOR_CORES) -> float | None:
  """Roughly the seconds one train step takes on `cores` CPU cores: the measured anchor of the
  generator (CPU_STEP_ANCHORS) scaled by pixels x batch x members, by (ngf / 64)^2 (the bulk of
  the FLOPs) and by 2 / cores. None for a generator without an anchor."""
  if generator not in CPU_STEP_ANCHORS:
    return None
  anchor_crop, anchor_seconds = CPU_STEP_ANCHORS[generator]
  work = (crop_size / anchor_crop)**2 * batch_size * members * (ngf / 64)**2
  return anchor_seconds * work * CPU_ANCHOR_CORES / max(cores, 1)


def cpu_only_warning(config: ml_collections.ConfigDict, members: int, devices: list[Any],
                     cores: int) -> str | None:
  """The start-of-run warning for a paper-sized run (estimated step >= CPU_WARNING_SECONDS)
  that finds only CPU devices, or None."""
  if any(device.platform != 'cpu' for device in devices):
    return None
  seconds = cpu_seconds_per_step(config.model.generator, config.model.ngf, config.data.crop_size,
                                 config.batch_size, members, cores)
  if seconds is None or seconds < CPU_WARNING_SECONDS:
    return None
  ensemble_note = f', {members} members' if members > 1 else ''
  return (f'Only CPU devices found ({cores} cores): a train step of this config '
          f'({config.model.generator}, ngf {config.model.ngf}, {config.data.crop_size} px, batch '
          f'{config.batch_size}{ensemble_note}) takes roughly {seconds:.0f} s here, '
          f'{seconds * 1000 / 3600:.1f} hours per 1,000 steps. To train on a GPU or TPU, install '
          f'its jax wheel: pip install "jax[cuda12]=={jax.__version__}" (NVIDIA GPU) or '
          f'"jax[tpu]=={jax.__version__}" (TPU VM); see README, "Install on accelerators".')


def _cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


@dataclasses.dataclass
class _Member:
  """What the loop keeps for one run: a single run, or one member of an ensemble."""
  name: str
  config: ml_collections.ConfigDict
  workdir: Path
  dataset: data.Dataset
  manager: Any = None
  writer: Any = None
  batches: Any = None
  last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  failure: str = ''  # Why it stopped before the others (a non-finite loss); '' while it trains.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final summary. With ensemble fields
  set (`ensemble`), trains the members in `<workdir>/<name>` and returns {name: summary}.

  Nothing is written into a workdir unless the config is valid, the dataset is found, the
  workdir is of the run's kind (`workdir.check_run_kind`), a new run's config.init_from fits it
  and can be read, and no other live run holds it.
  """
  workdir = Path(workdir)
  if ensemble.is_ensemble(config):
    config_lib.validate(config, num_devices=1)  # The member layout checks the devices.
    member_list = ensemble.members(config)
    if len(member_list) > 1:
      ensemble.member_mesh(len(member_list), config.batch_size)
  else:
    config_lib.validate(config, num_devices=jax.device_count())
    member_list = [ensemble.Member('', config, {})]
  workdir_lib.check_folder(workdir, '--workdir')
  workdir_lib.check_run_kind(workdir, ensemble=bool(member_list[0].name))
  # Members start afresh unless every one has a checkpoint (a kill between the members' saves).
  starts_afresh = not all(
      checkpointing.saved_steps(workdir / member.name if member.name else workdir)
      for member in member_list)
  dataset = data.create_dataset(config.data,
                                seed=member_list[0].config.seed,
                                channels_A=config.model.channels_A,
                                channels_B=config.model.channels_B)
  # A new run reads its warm start's source before it writes anything.
  warm_start = (checkpointing.read_warm_start_source(member_list[0].config)
                if config.init_from and starts_afresh else None)
  warning = cpu_only_warning(config, len(member_list), jax.devices(), _cpu_cores())
  if warning and jax.process_index() == 0:
    logging.warning(warning)
  runs = [
      _Member(member.name, member.config, workdir / member.name if member.name else workdir,
              dataset.reseeded(member.config.seed)) for member in member_list
  ]
  # An ensemble writes only into its members' folders, which may share their parent with other
  # ensembles training at once (a sweep's groups on a CPU: experiments/sweeplib/runner.py).
  with exclusive_workdirs([run.workdir for run in runs]):
    finals = _train_and_evaluate(config, runs, member_list, warm_start)
  return finals[''] if not runs[0].name else finals


def _restore(runs: list[_Member], trainer: train.Trainer,
             warm_start: checkpointing.WarmStartSource | None) -> tuple[Any, int]:
  """(the state to start from, its step): the members' newest step that all have intact, or a
  fresh state (warm-started from `warm_start` where config.init_from says)."""
  # A single run restores straight into its (possibly multi-process) sharding; members are
  # restored on one device and stacked.
  sharding = (trainer.state_sharding if trainer.num_members == 1 else
              jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  abstract = state_lib.abstract_like(
      jax.eval_shape(state_lib.train_state_initializer(runs[0].config)), sharding)
  newest = [run.manager.latest_step() for run in runs]
  if any(step is None for step in newest):
    states, data_states, step = None, None, 0
  else:
    restored = [checkpointing.restore_intact(run.manager, abstract) for run in runs]
    step = min(r.step for r in restored)
    for run, r in zip(runs, restored):
      if r.damaged:
        run.manager = _set_aside_damaged(run.manager, run.workdir, r.damaged,
                                         run.config.keep_checkpoints)
    restored = [
        r if r.step == step else checkpointing.restore_intact(run.manager, abstract, step)
        for run, r in zip(runs, restored)
    ]
    states, data_states = [r.state for r in restored], [r.data_state for r in restored]
    logging.info('Resumed from step %d in %s.', step,
                 ', '.join(str(run.manager.directory) for run in runs))
    if runs[0].config.init_from:
      logging.info('Resuming this run; config.init_from (%s) only applies to a new run.',
                   runs[0].config.init_from)
  if trainer.num_members == 1:
    if states is not None:
      state = states[0]
    else:
      state = trainer.init()
      if runs[0].config.init_from:
        state = checkpointing.warm_started(state, warm_start, trainer.state_sharding)
  else:
    if states is None:
      state = trainer.init()
      if runs[0].config.init_from:
        fresh = state_lib.to_host(state)
        states = [
            checkpointing.warm_started(ensemble.member_of(fresh, trainer.layout, k), warm_start,
                                       None) for k in range(len(runs))
        ]
    if states is not None:
      state = tuple(
          jax.device_put(slot, trainer.state_sharding)
          for slot in ensemble.to_slots(jax.device_get(states), trainer.layout))
  for k, run in enumerate(runs):
    start_example = step * run.config.batch_size
    if data_states is not None and data_states[k] is not None:
      start_example = run.dataset.resume_example(data_states[k])
    run.batches = run.dataset.train_iterator(run.config.batch_size, start_example,
                                             jax.process_index(), jax.process_count())
  return state, step


def _member_state(trainer: train.Trainer, state: Any, k: int) -> Any:
  return state if trainer.num_members == 1 else ensemble.member_of(state, trainer.layout, k)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, runs: list[_Member], member_list: list[ensemble.Member],
    warm_start: checkpointing.WarmStartSource | None) -> dict[str, dict[str, Any]]:
  is_chief = jax.process_index() == 0
  dataset = runs[0].dataset
  if len(runs) == 1:  # The run's own config (an ensemble of one member has its own values).
    config = runs[0].config
  for run in runs:
    checkpointing.check_and_save_config(run.workdir, run.config, write=is_chief)
  logging.info('Data: %s.', dataset.summary)

  epoch_steps = state_lib.steps_per_epoch(dataset.epoch_size, config.batch_size)
  num_steps = state_lib.total_train_steps(config, epoch_steps)
  trainer = train.build_trainer(config, epoch_steps, members=member_list if len(runs) > 1 else None)
  logging.info(
      'Training %d steps (%d per epoch of %d examples) of %d run(s), global batch %d over %d '
      'devices: %d per device, %d per process of %d.', num_steps, epoch_steps, dataset.epoch_size,
      len(runs), config.batch_size, jax.device_count(),
      config.batch_size * len(runs) // jax.device_count(), config.batch_size // jax.process_count(),
      jax.process_count())
  if len(runs) > 1:
    layout = trainer.layout
    programs = len({id(fn) for fn in trainer.step.fns})
    logging.info(
        'Ensemble of %d members in %d slot(s) per step (%s), %d compiled program(s): %s.',
        len(runs), len(layout.slots), f'{len(layout.slots[0])} member(s) each, '
        f'{layout.members_per_call} per device and call' if layout.stacked else
        'one member each, on all devices', programs, '; '.join(run.name for run in runs))

  for run in runs:
    run.manager = checkpointing.create_manager(run.workdir, run.config.keep_checkpoints)
    run.writer = summaries.SummaryWriter(run.workdir)
  state, start_step = _restore(runs, trainer, warm_start)
  samples = dataset.sample_images(config.num_sample_images) if config.num_sample_images else None
  has_test_data = min(dataset.num_test('A'), dataset.num_test('B')) > 0
  test_sets, paired = (evaluation.load_test_sets(dataset, config.data.paired_test)
                       if has_test_data else ({}, False))
  features = evaluation.inception_features(config.inception_weights)

  def member_params(k, test_mode=False):
    """What samples (or, `test_mode`, evaluations) translate with: G's and F's averages, and
    in eval mode their running statistics."""
    member = _member_state(trainer, state, k)
    batch_stats = member.batch_stats if test_mode and config.model.eval_mode else None
    params = state_lib.translation_params(member.params, batch_stats=batch_stats)
    return params if trainer.num_members == 1 else state_lib.to_host(params)

  def evaluate(run, k, step) -> dict[str, float]:
    if not has_test_data:
      return {}
    params = member_params(k, test_mode=True)
    key = state_lib.sample_key(run.config.seed)
    translate_BtoA = (None if trainer.translate_BtoA is None else functools.partial(
        trainer.translate_BtoA, key, params))
    results = evaluation.evaluate(functools.partial(trainer.translate_AtoB, key, params),
                                  translate_BtoA, test_sets, paired, features)
    run.writer.scalars(step, {workdir_lib.eval_scalar(k): v for k, v in results.items()})
    if is_chief:
      evaluation.log_summary(step, results)
      workdir_lib.write_json(workdir_lib.eval_file(run.workdir, step), {'step': step, **results})
    return results

  def save_samples(run, k, step):
    if samples is None:
      return
    # Every process runs the computation (it spans all devices); process 0 writes the grid.
    images = state_lib.to_host(
        trainer.translate(state_lib.sample_key(run.config.seed), member_params(k), samples['A'],
                          samples['B']))
    if not is_chief:
      return
    grid = summaries.translation_grid(images)
    summaries.save_png(workdir_lib.sample_file(run.workdir, step), grid)
    run.writer.image(step, 'samples/real_fake_rec', grid)

  def save_checkpoints(step):
    for k, run in enumerate(runs):
      if not run.failure and step not in run.manager.all_steps():
        checkpointing.save(run.manager, _member_state(trainer, state, k), run.config,
                           run.batches.state())

  def next_batch():
    rows = [next(run.batches) for run in runs]
    if trainer.num_members == 1:
      return global_batch(rows[0], trainer.batch_sharding)
    return tuple(
        global_batch(slot, trainer.batch_sharding)
        for slot in ensemble.to_slots(rows, trainer.layout))

  progress = summaries.Progress(start_step, num_steps)
  start_time = time.perf_counter()
  logged_metrics = []  # Each step's metrics since the last progress line, on the device.
  in_flight = collections.deque()  # The metrics of the steps dispatched and maybe not done.
  step = start_step
  # Whatever ends the loop (a non-finite loss included), pending checkpoint writes complete.
  with _StopRequest() as stop, contextlib.ExitStack() as cleanup:
    for run in runs:
      cleanup.enter_context(run.batches)
      cleanup.enter_context(contextlib.closing(run.manager))
    compiled_step = None
    while step < num_steps and not stop.requested:
      batch = next_batch()
      if compiled_step is None:
        # Compiled before the first step runs, so that the compiler's memory is released first.
        compiled_step = trainer.step.lower(state, batch).compile()
      state, metrics = compiled_step(state, batch)
      step += 1
      logged_metrics.append(metrics)
      in_flight.append(metrics)
      if len(in_flight) > MAX_STEPS_IN_FLIGHT:
        jax.block_until_ready(in_flight.popleft())

      last = step == num_steps or stop.requested
      if step % config.log_every_steps == 0 or last:
        sums = sum_in_order(state_lib.to_host(logged_metrics))
        member_sums = [sums] if trainer.num_members == 1 else [
            ensemble.member_of(sums, trainer.layout, k) for k in range(len(runs))
        ]
        count, logged_metrics = len(logged_metrics), []
        steps_per_s, eta_s = progress.report(step)
        for k, run in enumerate(runs):
          if run.failure:
            continue
          run.last_metrics = {name: float(value) / count for name, value in member_sums[k].items()}
          _check_finite(step, run, len(runs) == 1 or config.ensemble.fail_fast)
          if run.failure:
            continue
          run.writer.scalars(step, {**run.last_metrics, 'steps_per_s': steps_per_s})
          if is_chief:
            m = run.last_metrics
            logging.info(
                '%sstep %d/%d  epoch %.2f  %s  lr %.2e  %.2f steps/s  ETA %s',
                f'{run.name}: ' if run.name else '', step, num_steps, step / epoch_steps,
                '  '.join(f'{label} {m[key]:.3f}' for label, key in LOGGED_LOSSES if key in m),
                m['lr'], steps_per_s, summaries.format_duration(eta_s))
        if all(run.failure for run in runs):
          raise errors.DivergedError('Every member stopped on a non-finite loss: ' +
                                     '; '.join(run.failure for run in runs))
      alive = [(k, run) for k, run in enumerate(runs) if not run.failure]
      if step % config.sample_every_steps == 0 or last:
        for k, run in alive:
          save_samples(run, k, step)
      if config.eval_every_steps and step % config.eval_every_steps == 0 and not last:
        for k, run in alive:
          evaluate(run, k, step)
      if step % config.checkpoint_every_steps == 0:
        save_checkpoints(step)
    # The run's end, or a stop signal that may have come after this step's checks.
    if step > start_step:
      save_checkpoints(step)

  wall_time = time.perf_counter() - start_time
  finals = {}
  for k, run in enumerate(runs):
    if run.failure:
      continue
    final = {
        'step': step,
        'wall_time_s': wall_time,
        'steps_per_s': (step - start_step) / max(wall_time, 1e-9)
    }
    final.update({workdir_lib.flat_name(name): v for name, v in run.last_metrics.items()})
    final.update(evaluate(run, k, step))
    run.writer.flush()
    run.writer.close()
    finals[run.name] = final
    if is_chief:
      status = ('stopped early by a signal; rerun the same command to resume'
                if stop.requested else 'done')
      logging.info('Run %s. Workdir %s: checkpoints/, samples/, tensorboard/, config.json.', status,
                   run.workdir)
      if step == num_steps:
        workdir_lib.write_json(run.workdir / workdir_lib.FINAL_FILE, final)
      if run.config.plot_at_end:
        _plot(run.workdir)
      prefix = f'name={run.name} ' if run.name else ''
      print('final: ' + prefix + summaries.key_values(final), flush=True)
  return finals
