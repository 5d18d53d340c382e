"""The tiny RL setup several test files train: a ~3k-parameter policy with the multiply task's
character tokenizer, a reward module, and a config for a few quick steps."""

from pathlib import Path

import torch

from ponder.models import Decoder, ModelConfig
from ponder.rl import RLConfig
from ponder.tasks import multiply
from ponder.tokenizer import build_char_tokenizer

REWARDS_MODULE = '''
def sevens(prompt, completion, problem):
    """Share of 7s in the completion: a tiny random model has variance here from step 1."""
    return completion.count("7") / max(len(completion), 1)

def flat_for_odd(prompt, completion, problem):
    """Signal only for problems with an even first operand; odd ones are a zero-variance group."""
    return sevens(prompt, completion, problem) if problem.meta["a"] % 2 == 0 else 1.0

def constant(prompt, completion, problem):
    """The same reward for every completion: nothing to learn."""
    return 1.0
'''


def make_base(root: Path) -> Path:
    """Write the policy and tokenizer to root/base and the rewards to root/rl_test_rewards.py."""
    tok = build_char_tokenizer(multiply.ALPHABET)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                head_dim=8, tie_word_embeddings=True))
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    (root / "rl_test_rewards.py").write_text(REWARDS_MODULE)
    return root


def rl_config(base: Path, out: Path, **kw) -> RLConfig:
    settings = dict(model=str(base / "base"), task="multiply:train", task_limit=40, rewards=["rl_test_rewards:sevens"],
                    prompts_per_step=4, group_size=4, max_new_tokens=10, steps=4, lr=3e-2, eval_every=0,
                    save_every=2, micro_batch_size=8, output_dir=str(out), seed=1)
    settings.update(kw)
    return RLConfig(**settings)
