"""Collects benchmark result lines into a JSONL file and prints them as a markdown table.

    python -m cyclegan_jax.benchmark ... | python experiments/gpu_results.py record \\
        --label=256px_b1_float32 --jsonl=results.jsonl
    python experiments/gpu_results.py table results.jsonl

`record` reads a benchmark's output (stdin, or `--log`), takes its `benchmark: key=value ...` line
(or `official: ...`, from experiments/official_step.py), adds the label and appends it to the
JSONL file as one JSON object; with no such line (a run that failed or ran out of time) it
records `{"label": ..., "status": "failed"}`. `table` prints one row per record, then the ratios
the issues ask for where both runs are there: an ensemble's member-steps/s against the single
run of the same recipe and dtype, and our step time against the official code's. Standard
library only, so it runs in any Python.
"""

import argparse
import json
import sys

PREFIXES = ('benchmark: ', 'official: ')
COLUMNS = (
    ('label', 'run', '{}'),
    ('framework', 'code', '{}'),
    ('workload', 'workload', '{}'),
    ('generator', 'generator', '{}'),
    ('crop_size', 'px', '{:.0f}'),
    ('batch_size', 'batch', '{:.0f}'),
    ('members', 'members', '{:.0f}'),
    ('compute_dtype', 'dtype', '{}'),
    ('step_time_median_s', 'step (s)', '{:.4f}'),
    ('member_steps_per_s', 'member-steps/s', '{:.2f}'),
    ('examples_per_s', 'examples/s', '{:.1f}'),
    ('achieved_flops_per_s', 'TFLOP/s', '{:.1f}', 1e-12),
    ('fraction_of_peak', 'of peak', '{:.1%}'),
    ('device_peak_gib', 'device GiB', '{:.2f}'),
    ('peak_rss_gib', 'RSS GiB', '{:.2f}'),
    ('compile_s', 'compile (s)', '{:.1f}'),
)


def parse_value(text: str):
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text)
  except ValueError:
    return text


def parse_result(output: str) -> dict | None:
  """The key=value figures of the last result line in `output`, or None."""
  found = None
  for line in output.splitlines():
    for prefix in PREFIXES:
      if line.startswith(prefix):
        found = {
            key: parse_value(value)
            for key, value in (pair.split('=', 1) for pair in line[len(prefix):].split())
        }
        found.setdefault('framework', 'cyclegan_jax')
  return found


def record(label: str, output: str, jsonl: str) -> dict:
  figures = parse_result(output)
  entry = {
      'label': label,
      'status': 'ok',
      **figures
  } if figures else {
      'label': label,
      'status': 'failed'
  }
  with open(jsonl, 'a', encoding='utf-8') as file:
    file.write(json.dumps(entry) + '\n')
  return entry


def cell(entry: dict, column: tuple) -> str:
  key, _, fmt, *scale = column
  value = entry.get(key)
  if value is None or value == '':
    return ''
  if isinstance(value, (int, float)) and scale:
    value *= scale[0]
  try:
    return fmt.format(value)
  except (ValueError, TypeError):
    return str(value)


def ratios(entries: list[dict]) -> list[str]:
  """Ensemble member-steps/s over the single run of the same recipe and dtype; ours over the
  official code's step time at the same size."""
  ok = [entry for entry in entries if entry.get('status') == 'ok']
  ours = [entry for entry in ok if entry.get('framework') == 'cyclegan_jax']
  official = [entry for entry in ok if entry.get('framework') == 'official_pytorch']
  recipe = lambda e: (e.get('workload'), e.get('generator'), e.get('crop_size'), e.get(
      'batch_size'), e.get('compute_dtype'))
  lines = []
  for group in ours:
    if group.get('members', 1) <= 1:
      continue
    for single in ours:
      if single.get('members', 1) == 1 and recipe(single) == recipe(group):
        gain = group['member_steps_per_s'] / single['member_steps_per_s']
        lines.append(f'- {group["label"]}: {group["members"]} members in one program run '
                     f'{gain:.2f}x the member-steps/s of one run ({single["label"]}).')
        break
  for theirs in official:
    for entry in ours:
      same = (entry.get('members', 1) == 1 and entry.get('workload') == theirs.get('workload') and
              entry.get('generator') == theirs.get('generator') and
              entry.get('crop_size') == theirs.get('crop_size') and
              entry.get('batch_size') == theirs.get('batch_size'))
      if same:
        ratio = entry['step_time_median_s'] / theirs['step_time_median_s']
        lines.append(f'- {entry["label"]} ({entry["compute_dtype"]}) / {theirs["label"]} '
                     f'(official, float32): step time ratio {ratio:.2f}.')
  return lines


def table(jsonl: str) -> str:
  with open(jsonl, encoding='utf-8') as file:
    entries = [json.loads(line) for line in file if line.strip()]
  devices = sorted({
      f'{entry.get("devices", 1)} x {entry["device_kind"]}' for entry in entries
      if entry.get('device_kind')
  })
  lines = [f'Devices: {", ".join(devices) or "unknown"}', '']
  lines.append('| ' + ' | '.join(column[1] for column in COLUMNS) + ' |')
  lines.append('|' + ' --- |' * len(COLUMNS))
  for entry in entries:
    if entry.get('status') != 'ok':
      lines.append(f'| {entry["label"]} | failed (see its log) |' + ' |' * (len(COLUMNS) - 2))
      continue
    lines.append('| ' + ' | '.join(cell(entry, column) for column in COLUMNS) + ' |')
  extra = ratios(entries)
  if extra:
    lines += [''] + extra
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  record_parser = commands.add_parser('record', help='Append a result line to a JSONL file.')
  record_parser.add_argument('--label', required=True)
  record_parser.add_argument('--jsonl', required=True)
  record_parser.add_argument('--log', help='A benchmark output file (default: stdin).')
  table_parser = commands.add_parser('table', help='Print a JSONL file as a markdown table.')
  table_parser.add_argument('jsonl')
  args = parser.parse_args(argv)
  if args.command == 'record':
    if args.log:
      with open(args.log, encoding='utf-8', errors='replace') as file:
        output = file.read()
    else:
      output = sys.stdin.read()
    print(json.dumps(record(args.label, output, args.jsonl)), flush=True)
  else:
    print(table(args.jsonl))


if __name__ == '__main__':
  main()
