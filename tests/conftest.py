"""Shared test helpers: load config files by name."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
  """`configs/<name>.py`'s get_config(), as the command line would load it."""
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture
def tiny_config():
  return load_config('tiny')


def updated(config, **fields):
  """A copy of `config` with `fields` changed; nested fields as model__ngf=16."""
  copy = config.copy_and_resolve_references()
  copy.update_from_flattened_dict({k.replace('__', '.'): v for k, v in fields.items()})
  return copy
