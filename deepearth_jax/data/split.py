"""Placeholder until the split module lands (being written now)."""


def add_split_arguments(p):
    pass


def run_split(args):
    raise NotImplementedError("split is not written yet")
