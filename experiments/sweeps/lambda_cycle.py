"""A small example sweep: the cycle-consistency weight λ against the seed, on the toy config.

    python -m experiments.sweep --config=configs/tiny.py \
        --sweep=experiments/sweeps/lambda_cycle.py --root=runs/lambda_cycle

Four runs named `lambda_cycle=1.0,seed=0` ... `lambda_cycle=10.0,seed=1`, of some seconds each.
"""

from experiments import sweep


def get_sweep():
  return sweep.grid(lambda_cycle=[1.0, 10.0], seed=[0, 1])
