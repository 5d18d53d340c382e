"""Benchmarks against peers measured in the same run: figures and ratios, never pass/fail.

Each benchmark lives in its own module; these wrappers keep `ponder --help` free of heavy imports.
"""


def generate(args):
    from ponder.bench.generate import main
    return main(args)


def grade(args):
    from ponder.bench.grade import main
    return main(args)


def grpo(args):
    from ponder.bench.grpo import main
    return main(args)
