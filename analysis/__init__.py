"""commsgd's analysis package: MLflow runs in, fitted rates, theory comparisons and reports out.

    runs      load_runs(uri, experiments) -> RunSet (tidy frames of runs and metric histories)
    rates     linear rate, power law, floors, time-to-target, speedup, all with bootstrap CIs
    groups    per-configuration arrays and fits, costs to a target, the alpha-beta projection
    tuning    the tuning protocol: tuning and held-out seeds, trials, the choice
    leaderboard  boards per problem: every target, depth, floor, ranks with ties; JSON, merge
    theory    the algorithm modules' theorems beside the fitted values
    claims    docs/theory.md §9's predictions against the experiment presets' runs
    plots     convergence, cost to each target, performance profiles, speedup (PNG bytes)
    document  one report model rendered as Markdown and as standalone HTML
    report    the `commsgd-report` command

It reads MLflow only and never imports the runner (suite.runner); it evaluates theorems through
suite.algorithms, compressor constants through suite.compressors, and reads the list of tuning
costs from suite.config.
"""

from .rates import Estimate, joint_floor, linear_rate, power_law, speedup, tail_floor
from .runs import RunSet, load_runs

__all__ = ["Estimate", "RunSet", "joint_floor", "linear_rate", "load_runs", "power_law",
           "speedup", "tail_floor"]
