"""The training runtime shared by every method (RL, SFT, ...): device and precision, the
distributed launch, memory options, train-state checkpoints, schedules, the data stream, metrics.

A method's trainer holds its own loop and takes everything else from here.
"""
