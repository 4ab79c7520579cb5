"""Placeholder until the data benchmark lands (being written now)."""


def add_arguments(p):
    pass


def run(args):
    raise NotImplementedError("the data benchmark is not written yet")
