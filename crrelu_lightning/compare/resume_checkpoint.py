"""The comparison runner's own "latest state" checkpoint callback."""
from crrelu_lightning.checkpointing import AtomicModelCheckpoint


class ResumeCheckpoint(AtomicModelCheckpoint):
    """An ``AtomicModelCheckpoint`` (atomic writes, docs/reliability.md) that always keeps the latest state
    (``monitor=None``).

    A subclass only so its ``state_key`` (which starts with the class name) differs from an unmonitored
    ``ModelCheckpoint`` the config may already have; Lightning refuses two callbacks with the same key.
    """
