"""Placeholder until the convert module lands (being written now)."""


def add_convert_arguments(p):
    pass


def run_convert(args):
    raise NotImplementedError("convert is not written yet")
