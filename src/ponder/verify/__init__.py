"""Rewarding the reasoning, not only the answer: a learned verifier and meta-verifier (floor 4,
on ponder.sft and ponder.rl as the ladder's methods are) and the study that compares them with
the outcome and process rewards on the demo task (`study`, floor 5: it reads ponder.demo).

  protocol  what the verifier and meta-verifier read and write, true labels, their rewards
  data      labelled generator samples, balance, the train / held-out wall
  judge     the models: greedy reading, SFT, GRPO with the (meta-)verifier reward
  testtime  best-of-N by verifier score, majority, oracle; refinement and resampling
  study     `ponder verify-study`
Step checkers and the process reward are pure functions in ponder.rewards.process.
"""
