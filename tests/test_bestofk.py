import math
import os
from contextlib import nullcontext

import torch

import bestofk
from conftest import run_script
from data import world
from model import GPT, GPTConfig, answer_text, finetune, make_optimizer, sample_answers, tokenize

INF = float('inf')


def test_selection_picks_the_best_answer_per_prompt_with_ties_and_thresholds():
    prompts = ['a?', 'b?', 'c?']
    answers = ['a1', 'a2', 'a3', 'b1', 'b2', 'b3', 'c1', 'c2', 'c3']
    scores = [0.1, 0.9, 0.3, 0.5, 0.5, -1.0, -INF, 0.2, -INF]
    assert bestofk.select_best(prompts, answers, scores, 3) == [('a?', 'a2'), ('b?', 'b1'), ('c?', 'c2')]
    assert bestofk.select_best(prompts, answers, scores, 3, min_score=0.4) == [('a?', 'a2'), ('b?', 'b1')]
    assert bestofk.select_best(['c?'], ['c1', 'c2'], [-INF, -INF], 2) == []  # no answer ended
    assert bestofk.select_best(prompts, answers[::3], scores[::3], 1) == [('a?', 'a1'), ('b?', 'b1')]  # K = 1


def test_best_of_k_fine_tuning_raises_a_synthetic_reward(enc):
    """The reward: the share of the letter 'e' in the answer. Keep the best of 8, fine-tune, sample again."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32))
    prompts = [f'Tell me where {name} lives.' for name in world.NAMES][:12]
    share = lambda text: text.count('e') / max(len(text), 1)

    def mean_reward():
        answers = sample_answers(model.eval(), enc, prompts * 8, 16)
        return sum(share(answer_text(enc, t)) for t in answers) / len(answers)

    before = mean_reward()
    for _ in range(2):  # two rounds of expert iteration
        tokens = sample_answers(model.eval(), enc, [p for p in prompts for _ in range(8)], 16)
        answers = [answer_text(enc, t) for t in tokens]
        chosen = bestofk.select_best(prompts, answers, [share(a) for a in answers], 8)
        examples = tokenize(enc, [[dict(role='user', content=p), dict(role='assistant', content=a)] for p, a in chosen], 64)
        for _ in finetune(model.train(), make_optimizer(model, 3e-3, 0.1, 'cpu'), examples, 40, 12, 3e-3, 0.0, 0,
                          nullcontext(), 'cpu'):
            pass
    after = mean_reward()
    assert after > 1.5 * before, (before, after)


def test_bestofk_stage_on_the_tiny_chain(tiny_chain, tmp_path):
    """The script end to end with a tiny RM: K = 2, two rounds; best-of-K is reported for K = 1, 2, 4."""
    rm_dir = str(tmp_path / 'reward')
    run_script('reward.py', f'--policy={tiny_chain["sft"]}', f'--init_from={tiny_chain["sft"]}', f'--out_dir={rm_dir}',
               '--n_prompts=8', '--k=2', '--n_eval=0', '--max_new_tokens=16', '--device=cpu')
    out = str(tmp_path / 'bestofk')
    result = run_script('bestofk.py', f'--init_from={tiny_chain["sft"]}', f'--reward_model={rm_dir}', f'--out_dir={out}',
                        '--n_prompts=8', '--k=2', '--rounds=2', '--iters=4', '--batch_size=4', '--n_eval=8',
                        '--eval_k=4', '--max_new_tokens=16', '--device=cpu')
    metrics = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['metrics']
    assert [row['k'] for row in metrics['best_of_k']] == [1, 2, 4]
    assert [row['kl_bound'] for row in metrics['best_of_k']] == [0.0, math.log(2) - 0.5, math.log(4) - 0.75]
    assert all(0 <= row['gold'] <= 1 for row in metrics['best_of_k']) and 'round 2' in result.stdout
