"""The paper's loss ablation (Table 4) on the offline default config, three seeds per variant.

    python -m experiments.sweep --config=configs/default.py \
        --sweep=experiments/sweeps/paper_ablation.py --root=runs/paper_ablation --plot

Six variants × seeds 0, 1, 2 = 18 runs. Each run is shortened from the default's 75 + 68 epochs
(2,002 steps) to 40 + 31 epochs of 14 steps (994 steps; the same schedule shape: a constant
learning rate, then a linear decay to zero): 80 s of training at 12 steps/s on 2 CPU cores, plus
start-up and compilation.
The variants switch loss terms off (config fields `use_gan_G`, `use_gan_F`, `use_cycle_forward`,
`use_cycle_backward`, `lambda_identity`); a switched-off term is still logged.
"""

from experiments import sweep

# 994 = 2 · 7 · 71 steps: samples every 142 steps; checkpoints and held-out evaluations at the
# middle and the end (an evaluation costs a few seconds: every 142 steps would add ~15 s a run).
SHORT_RUN = {
    'num_epochs': 40,
    'num_epochs_decay': 31,
    'log_every_steps': 71,
    'sample_every_steps': 142,
    'checkpoint_every_steps': 497,
    'eval_every_steps': 497,
}

VARIANTS = sweep.runs(
    {
        'name': 'cycle_alone',
        'use_gan_G': False,
        'use_gan_F': False
    },
    {
        'name': 'gan_alone',
        'use_cycle_forward': False,
        'use_cycle_backward': False
    },
    {
        'name': 'gan+forward_cycle',
        'use_cycle_backward': False
    },
    {
        'name': 'gan+backward_cycle',
        'use_cycle_forward': False
    },
    {'name': 'cyclegan'},
    {
        'name': 'cyclegan+identity',
        'lambda_identity': 0.5
    },
)


def get_sweep():
  return sweep.Sweep(sweep.product(VARIANTS, sweep.grid(seed=[0, 1, 2])), fixed=SHORT_RUN)
