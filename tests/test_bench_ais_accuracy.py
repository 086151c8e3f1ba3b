"""The time-to-accuracy benchmark's own pieces: its reference AIS is a correct AIS, its accounting is right."""
import copy
import importlib.util
import math
import sys
from pathlib import Path

import torch

from evalkit.estimators import bounds
from evalkit.models import LinearGaussianModel

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ais_accuracy.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ais_accuracy", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_reference_ais_reaches_the_exact_marginal_with_enough_steps():
    bench = _bench()
    model = LinearGaussianModel.random(3, 1, seed=2)
    torch.manual_seed(1)  # the data, then the reference's own draws below: the same numbers every run
    x = model.marginal().sample((4,)).float()
    torch.manual_seed(0)
    with torch.no_grad():
        log_w = bench.reference_bdmc_ais(copy.deepcopy(model).float(), x, steps=200, chains=50)
    assert log_w.shape == (4, 50) and log_w.dtype == torch.float64
    estimate = torch.logsumexp(log_w, 1) - math.log(50)
    exact = model.log_marginal(x.double())
    # within 5 Monte Carlo SEs (delta method over the chains) per datapoint; over 12 data seeds the
    # largest of 48 such ratios was 3.6 (a fixed 0.05 nats failed on some seeds)
    se = torch.from_numpy(bounds.iwae_mc_variance(log_w.numpy())).sqrt()
    assert bool(((estimate - exact).abs() < 5 * se).all()), (estimate, exact, se)
    torch.manual_seed(0)
    with torch.no_grad():
        few = bench.reference_bdmc_ais(copy.deepcopy(model).float(), x, steps=2, chains=50)
    assert float(few.mean()) < float(log_w.mean())  # a short run from the prior falls below


def test_time_to_a_tolerance_takes_the_first_rung_within_it_and_extrapolates_only_near_it():
    bench = _bench()
    rungs = [bench.Rung("m", 10, 1.0, -0.1, 0.01), bench.Rung("m", 30, 3.0, -0.004, 0.002),
             bench.Rung("m", 100, 10.0, -0.001, 0.001)]
    assert rungs[1].bound == 0.004 + 2 * 0.002
    assert bench.time_to(rungs, 0.01) == (3.0, False)
    # not reached: bound 0.12 at 1 s, 0.03 at 4 s -> slope -1 on log-log -> 0.01 at 12 s
    far = [bench.Rung("m", 10, 1.0, 0.1, 0.01), bench.Rung("m", 40, 4.0, 0.01, 0.01)]
    seconds, extrapolated = bench.time_to(far, 0.01)
    assert extrapolated and abs(seconds - 12.0) < 1e-9
    # a last bound more than 10x the tolerance is not extrapolated
    assert bench.time_to(far, 0.001) == (None, True)
