"""chat.py as a user runs it, on a tiny untrained checkpoint (no training needed), on the CPU."""
import os
import subprocess
import sys

import pytest

from data import world
from data.bpe import save_bpe, train_bpe
from model import GPT, SPLIT_PATTERN, GPTConfig, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chat(*args, stdin=None):
    return subprocess.run([sys.executable, 'chat.py', '--device=cpu', *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})


@pytest.fixture(scope='module')
def sft_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp('out') / 'sft'
    path.mkdir()
    text = ' '.join(world.corpus(world.make_world(0), 50, seed=0))
    save_bpe(str(path / 'tokenizer.bpe'), train_bpe(text, 300, SPLIT_PATTERN, progress=False))
    gpt = GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(str(path / 'ckpt.pt'), gpt, tokenizer=str(path / 'tokenizer.bpe'), stage='sft')
    return path


def test_one_shot_prints_only_the_answer(sft_dir):
    result = chat(f'--ckpt={sft_dir}', '--prompt=Where does Mira live?', '--max_new_tokens=8')
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith('\n') and '/reset' not in result.stdout  # the answer alone (untrained: any text)
    assert 'tok/s)' in result.stderr and 'Traceback' not in result.stderr
    greedy = [chat(f'--ckpt={sft_dir / "ckpt.pt"}', '--prompt=Hi', '--temperature=0', '--top_k=0').stdout
              for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_missing_checkpoint_names_the_command_that_makes_it(tmp_path):
    result = chat(f'--ckpt={tmp_path / "out" / "sft"}', '--prompt=hi')
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.strip().count('\n') == 0 and 'python sft.py' in result.stderr


def test_too_long_prompt_is_one_clear_error(sft_dir):
    result = chat(f'--ckpt={sft_dir}', '--prompt=' + 'Mira lives in Willowbrook. ' * 20)
    assert result.returncode != 0 and 'block_size=64' in result.stderr and 'Traceback' not in result.stderr


def test_interactive_chat_keeps_history_resets_and_quits(sft_dir):
    turns = ['hello', '/reset', 'hi', 'Tell me about Mira and her pet.', 'And Tobin?', 'x ' * 80, 'Thanks!', '/quit']
    result = chat(f'--ckpt={sft_dir}', '--max_new_tokens=16', stdin='\n'.join(turns) + '\n')
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
    assert '(conversation forgotten)' in result.stdout
    assert result.stdout.count('dropping its oldest turns') == 1   # said once, however often it happens
    assert 'too long' in result.stdout                             # the 80-token message is skipped
    assert result.stderr.count('tok/s)') == 5                      # one answer per turn but those


def test_ctrl_d_ends_the_chat_quietly(sft_dir):
    result = chat(f'--ckpt={sft_dir}', '--max_new_tokens=4', stdin='hello\n')
    assert result.returncode == 0 and 'Traceback' not in result.stderr
