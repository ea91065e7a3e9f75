"""Command-line entry point: ``crrelu-lightning`` / ``python -m crrelu_lightning``.

``fit``/``validate``/``test``/``predict`` go to LightningCLI (models and datamodules are chosen by
``class_path`` in YAML, any LightningModule / LightningDataModule subclass works). A few extra tools
are dispatched before LightningCLI parses anything:

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

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "lightning_logs", "name": "default"},
    },
}


def _load(target: str) -> Callable[[List[str]], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _make_cli_class():
    from lightning.pytorch.cli import LightningCLI

    class CRReLUCLI(LightningCLI):
        """LightningCLI with the project's defaults (TensorBoard logger, config saved with the run), atomic
        checkpoint writes for every run, and resumed fits that continue in their checkpoint's run folder
        (docs/reliability.md)."""

        _resume_from = None

        def _parse_ckpt_path(self) -> None:
            # LightningCLI reads the checkpoint's hyperparameters here, first of all: resolve `last`, pin the
            # run folder and check the file now, so a damaged file gets our error, not a bare EOFError.
            from crrelu_lightning.checkpointing import load_checkpoint_file
            from crrelu_lightning.run_folders import pin_resumed_version

            sub = self.config.get("subcommand")
            if sub == "fit":
                self._resume_from = pin_resumed_version(self.config["fit"])
            ckpt_path = self.config[sub].get("ckpt_path") if sub else None
            if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
                load_checkpoint_file(ckpt_path, mmap=True)
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

    return CRReLUCLI


def cli_main(args: Optional[List[str]] = None, run: bool = True):
    """Build the LightningCLI (exposed for tests: ``cli_main([...], run=False)`` instantiates only)."""
    from lightning.pytorch import LightningDataModule, LightningModule

    import crrelu_lightning.activations  # noqa: F401  (registry populated before configs are parsed)

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
