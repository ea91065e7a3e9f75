"""Command-line entry point: ``crrelu-lightning`` / ``python -m crrelu_lightning``.

``fit``/``validate``/``test``/``predict`` go to LightningCLI (models and datamodules are chosen by
``class_path`` in YAML or a short name such as ``--model ImageClassifier``; any LightningModule /
LightningDataModule subclass works). Several ``--config`` files merge in order (a base plus overlays);
``--optimizer`` / ``--lr_scheduler`` fill the model's optimizer arguments; the datamodule's ``num_classes``,
``img_size``, ``in_chans`` and ``class_names`` are linked into the model; every run logs the activations'
learnable parameters (``--activation_params.*``). See docs/vision.md. A few extra tools are dispatched
before LightningCLI parses anything:

    crrelu-lightning data fetch NAME     fetch an offline dataset (see ``data --help``)
    crrelu-lightning eafo ...            static EAFO table and plot
    crrelu-lightning compare ...         activation × seed comparison runner
    crrelu-lightning export ...          language checkpoint -> Hugging Face GPT-2 folder
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, List, Optional

# name -> "module:function"; each function takes argv (without the command name) and returns an exit code.
EXTRA_COMMANDS: Dict[str, str] = {
    "data": "crrelu_lightning.data.fetch:main",
    "eafo": "crrelu_lightning.eafo_cli:main",
    "compare": "crrelu_lightning.compare.cli:main",
    "export": "crrelu_lightning.export:main",
}

# Imported before parsing so short class names resolve (`--model ImageClassifier`, `--data CIFAR10DataModule`,
# `--trainer.callbacks+=EAFOCallback`) and `--model.help` / `--data.help` list them.
PROJECT_MODULES = (
    "crrelu_lightning.models.vision",
    "crrelu_lightning.models.language",
    "crrelu_lightning.models.dpo",
    "crrelu_lightning.data.vision",
    "crrelu_lightning.data.text",
    "crrelu_lightning.data.preference",
    "crrelu_lightning.callbacks.activation_params",
    "crrelu_lightning.callbacks.entropy_monitor",
    "crrelu_lightning.callbacks.eafo",
    "crrelu_lightning.callbacks.prediction_writer",
    "crrelu_lightning.models.optim",
)

# Datamodule attributes the model receives (LightningCLI link_arguments, after the datamodule is built).
DATA_TO_MODEL = ("num_classes", "img_size", "in_chans", "class_names")

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "lightning_logs", "name": "default"},
    },
}


def _inject_optimizers(config) -> None:
    """Move a given top-level ``optimizer`` / ``lr_scheduler`` into ``model.init_args`` (in place).

    The saved ``config.yaml`` and the checkpoint's hparams then hold them where the model reads them.
    """
    import inspect

    from jsonargparse import Namespace

    for key in ("optimizer", "lr_scheduler"):
        value = config.get(key)
        if value is None:
            continue
        model = config.get("model")
        class_path = model.get("class_path") if isinstance(model, Namespace) else None
        cls = _import_class(class_path) if class_path else None
        if cls is None or key not in inspect.signature(cls.__init__).parameters:
            raise SystemExit(
                f"--{key} was given but the model {class_path or '?'} has no `{key}` argument to receive it; "
                f"set the model's own optimizer options (see `--model.help {class_path}`)"
            )
        model.init_args[key] = value
        config[key] = None


def _import_class(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _load(target: str) -> Callable[[List[str]], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _make_cli_class():
    from lightning.pytorch.cli import LightningCLI
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    class CRReLUCLI(LightningCLI):
        """LightningCLI with the project's defaults (TensorBoard logger, config saved with the run), atomic
        checkpoint writes for every run, and resumed fits that continue in their checkpoint's run folder
        (docs/reliability.md)."""

        _resume_from = None

        def _parse_ckpt_path(self) -> None:
            # LightningCLI reads the checkpoint's hyperparameters here, first of all: resolve `last`, pin the
            # run folder and check the file now, so a damaged file gets our error, not a bare EOFError.
            from crrelu_lightning.checkpointing import load_checkpoint_file
            from crrelu_lightning.run_folders import pin_resumed_version, resolve_last

            sub = self.config.get("subcommand")
            if sub == "fit":
                self._resume_from = pin_resumed_version(self.config["fit"])
            elif sub in ("validate", "test", "predict"):
                resolve_last(self.config[sub])
            ckpt_path = self.config[sub].get("ckpt_path") if sub else None
            if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
                load_checkpoint_file(ckpt_path, mmap=True)
            # Before the checkpoint's hyperparameters (which hold the linked values) are merged in: what is
            # set here came from the user's command line or config.
            _refuse_linked_model_values(self.config[sub] if sub else self.config)
            super()._parse_ckpt_path()

        def instantiate_trainer(self, **kwargs):
            from crrelu_lightning.checkpointing import install_atomic_io

            trainer = super().instantiate_trainer(**kwargs)
            install_atomic_io(trainer)
            return trainer

        def before_fit(self) -> None:
            if self._resume_from is not None:
                from crrelu_lightning.checkpointing import load_checkpoint_file
                from crrelu_lightning.run_folders import purge_tensorboard_after

                step = load_checkpoint_file(self._resume_from, mmap=True).get("global_step", 0)
                purge_tensorboard_after(self.trainer.logger, step)

        def _run_subcommand(self, subcommand: str) -> None:
            if subcommand != "fit":
                return super()._run_subcommand(subcommand)
            import os

            from crrelu_lightning.run_folders import remove_failed_empty_run

            log_dir = self.trainer.log_dir if self.trainer.logger is not None else None
            existed = bool(log_dir) and os.path.isdir(log_dir)
            try:
                super()._run_subcommand(subcommand)
            except BaseException:
                if self.trainer.global_step == 0 and self.trainer.is_global_zero:
                    remove_failed_empty_run(log_dir, existed)
                raise

        def add_arguments_to_parser(self, parser) -> None:
            # Top-level --optimizer / --lr_scheduler as in plain LightningCLI, but handed to the model's own
            # OptimizerCallable / LRSchedulerCallable arguments (see _inject_optimizers), so the module keeps
            # its parameter groups instead of Lightning's automatic `optimizer(self.parameters())`.
            kwargs = dict(instantiate=False, fail_untyped=False, required=False)
            parser.add_subclass_arguments((Optimizer,), "optimizer", skip={"params"}, **kwargs)
            parser.add_subclass_arguments((LRScheduler, ReduceLROnPlateau), "lr_scheduler", skip={"optimizer"}, **kwargs)
            for key in DATA_TO_MODEL:
                parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
            # In every run, whatever the config: the learnable activation parameters (ε …) per layer.
            from crrelu_lightning.callbacks.activation_params import ActivationParameterLogger

            parser.add_lightning_class_args(ActivationParameterLogger, "activation_params")

        def before_instantiate_classes(self) -> None:
            config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
            _inject_optimizers(config)

    return CRReLUCLI


class LinkedArgumentError(ValueError):
    """A model argument that the CLI links from the datamodule was also given."""


def _refuse_linked_model_values(config) -> None:
    """A value given for a linked model argument would be overwritten by the datamodule's: say so instead."""
    model = config.get("model") if hasattr(config, "get") else None
    init = model.get("init_args") if model is not None and hasattr(model, "get") else None
    if init is None or not hasattr(init, "get"):
        return
    given = [k for k in DATA_TO_MODEL if init.get(k) is not None]
    if given:
        keys = ", ".join(f"model.{k}={init.get(k)!r}" for k in given)
        raise LinkedArgumentError(
            f"{keys}: these come from the datamodule (linked: data.{given[0]} → model.{given[0]}), so a value here "
            "would be ignored. Remove it, and set the data instead (e.g. --data.root for an ImageFolder's classes; "
            "the image size and channels follow the dataset)."
        )


def cli_main(args: Optional[List[str]] = None, run: bool = True):
    """Build the LightningCLI (exposed for tests: ``cli_main([...], run=False)`` instantiates only)."""
    from lightning.pytorch import LightningDataModule, LightningModule

    import crrelu_lightning.activations  # noqa: F401  (registry populated before configs are parsed)

    for module in PROJECT_MODULES:
        importlib.import_module(module)

    cli_class = _make_cli_class()
    return cli_class(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(argv: Optional[List[str]] = None) -> int:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        return int(_load(EXTRA_COMMANDS[argv[0]])(argv[1:]) or 0)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n")
    # LightningCLI reads sys.argv itself when args is None (passing both triggers a warning).
    try:
        cli_main(None if from_sys else argv)
    except LinkedArgumentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        unknown = _unknown_activation(err)
        if unknown is None:
            raise
        # One short line instead of jsonargparse's union report, which repeats the message in a traceback.
        print(f"error: --model.activation: {unknown}", file=sys.stderr)
        return 2
    return 0


def _unknown_activation(err: BaseException):
    """The ``UnknownActivationError`` that caused ``err`` (model instantiation wraps it), if any."""
    from crrelu_lightning.activations import UnknownActivationError

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UnknownActivationError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
