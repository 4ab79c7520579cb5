"""Placeholder until the step benchmark lands (being written now)."""


def add_arguments(p):
    pass


def run(args):
    raise NotImplementedError("the step benchmark is not written yet")
