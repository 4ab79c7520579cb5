"""Placeholder until the convert benchmark lands (being written now)."""


def add_arguments(p):
    pass


def run(args):
    raise NotImplementedError("the convert benchmark is not written yet")
