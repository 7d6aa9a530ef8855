"""The bare-RQ reference job: does nothing, so a run of it measures the queue and the worker alone."""


def noop(*args: object) -> None:
    return None
