"""Defaults are defined once, in the config dataclasses: the command line, the Python API and the
DDP launcher must not drift from them."""

from __future__ import annotations

import inspect

import click

from diffst import api, cli, distributed
from diffst.config import PATCH_PER_FACTOR, TOP_GENES, TrainConfig, default
from diffst.model.config import SchedulerConfig

# option name -> the default it must have (None: derived from the data at run time)
TRAIN_DEFAULTS = {
    "steps": default(TrainConfig, "steps"),
    "batch_size": default(TrainConfig, "batch_size"),
    "lr": default(TrainConfig, "lr"),
    "seed": default(TrainConfig, "seed"),
    "device": default(TrainConfig, "device"),
    "bf16": default(TrainConfig, "bf16"),
    "log1p": default(TrainConfig, "log1p"),
    "disentangle_weight": default(TrainConfig, "disentangle_weight"),
    "prediction": default(SchedulerConfig, "prediction"),
    "top_genes": TOP_GENES,
    "patch": None,
    "work_um_per_px": None,
}
CLI_NAMES = {"learning_rate": "lr"}  # click parameter name -> option name above


def test_train_config_defaults_are_sane():
    assert TrainConfig().patch is None and PATCH_PER_FACTOR * 3 % 3 == 0
    assert default(TrainConfig, "lr") == TrainConfig().lr


def _cli_defaults(command: click.Command) -> dict:
    ctx = click.Context(command)
    return {CLI_NAMES.get(p.name, p.name): p.get_default(ctx) for p in command.params
            if isinstance(p, click.Option)}


def test_cli_train_options_take_the_dataclass_defaults():
    params = _cli_defaults(cli.train)
    for name, want in TRAIN_DEFAULTS.items():
        assert params[name] == want and type(params[name]) is type(want), \
            (name, params[name], want)


def test_ddp_options_take_the_dataclass_defaults():
    parser = distributed.build_parser()
    for name, want in TRAIN_DEFAULTS.items():
        assert parser.get_default(name) == want, (name, parser.get_default(name), want)


def test_python_api_takes_the_dataclass_defaults():
    for fn in (api.train_model, distributed.train_ddp):
        sig = inspect.signature(fn).parameters
        for name, want in TRAIN_DEFAULTS.items():
            if name == "prediction":  # None: the scheduler config's (or the one passed)
                assert sig[name].default is None
                continue
            assert sig[name].default == want, (fn.__name__, name, sig[name].default, want)


def test_scanpy_style_tools_take_the_api_defaults():
    from diffst import tl

    api_sig = inspect.signature(api.predict).parameters
    for name, param in inspect.signature(tl.super_resolve).parameters.items():
        if name in api_sig and param.default is not inspect.Parameter.empty:
            assert param.default == api_sig[name].default, name


def test_predict_defaults_agree_between_cli_and_api():
    params = _cli_defaults(cli.predict)
    sig = inspect.signature(api.predict).parameters
    for name in ("n_samples", "steps", "sampler", "batch_size", "seed", "eta", "device",
                 "autocast", "calibration"):
        assert params[name] == sig[name].default, (name, params[name], sig[name].default)
