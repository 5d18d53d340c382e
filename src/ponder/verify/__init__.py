"""Rewarding the reasoning, not only the answer: a learned verifier and meta-verifier (floor 4,
on ponder.sft and ponder.rl as the ladder's methods are) and the study that compares them with
the outcome and process rewards on the demo task (`study`, floor 5: it reads ponder.demo).

  protocol  what the verifier reads and writes, its analysis by comparison, true labels, rewards
  data      labelled generator samples, right solutions to train on, the train / held-out wall
  judge     the models: the verifier, the meta-verifier, SFT, GRPO with the verifier's reward
  testtime  best-of-N by verifier score, majority, oracle; refinement and resampling
  study     `ponder verify-study`
Step checkers and the process reward are pure functions in ponder.rewards.process.
"""
