"""chat.py as a user runs it, on a tiny untrained checkpoint (no training needed), on the CPU."""
import codecs
import os
import subprocess
import sys

import pytest
import torch

from data import world
from data.bpe import save_bpe, train_bpe
from model import GPT, SPLIT_PATTERN, GPTConfig, answer_text, load_checkpoint, load_tokenizer, prompt_tokens, save_checkpoint, \
    token_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chat(*args, stdin=None, merged=False):
    """chat.py's run; merged: stderr written into stdout, in the order printed."""
    return subprocess.run([sys.executable, 'chat.py', '--device=cpu', '--dtype=float32', *args], cwd=ROOT, input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                          text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})


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


def test_the_streamed_answer_is_the_answer_and_its_speed_comes_after_it(sft_dir):
    result = chat(f'--ckpt={sft_dir}', '--prompt=Who is Mira?', '--temperature=0', '--max_new_tokens=24', merged=True)
    assert result.returncode == 0, result.stdout
    answer, speed = result.stdout.rstrip('\n').rsplit('\n', 1)  # the answer, then the speed line last
    assert speed.startswith('(') and speed.endswith(' tok/s)')
    model, meta = load_checkpoint(str(sft_dir / 'ckpt.pt'), 'python sft.py')
    enc = load_tokenizer(meta['tokenizer'])
    torch.set_num_threads(1)
    tokens, lengths = model.eval().generate([prompt_tokens(enc, 'Who is Mira?')], 24, temperature=0,
                                            stop_token=enc.encode_single_token('<|end|>'))
    assert answer == answer_text(enc, tokens[0, :lengths[0]].tolist())  # streamed piece by piece: the same text


def test_a_character_split_across_tokens_is_printed_once_whole(sft_dir):
    enc = load_tokenizer(str(sft_dir / 'tokenizer.bpe'))
    byte_tokens = [enc.encode_single_token(bytes([b])) for b in 'é€'.encode()]  # 2 + 3 bytes, one token each
    utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
    pieces = [token_text(enc, utf8, t) for t in byte_tokens + [enc.encode_single_token('<|end|>')]]
    assert pieces == ['', 'é', '', '', '€', '']


def test_a_reward_model_is_refused(sft_dir, tmp_path):
    path = tmp_path / 'reward' / 'ckpt.pt'
    gpt = GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32, scalar_head=True))
    save_checkpoint(str(path), gpt, tokenizer=str(sft_dir / 'tokenizer.bpe'), stage='reward')
    result = chat(f'--ckpt={path.parent}', '--prompt=hi')
    assert result.returncode != 0 and 'Traceback' not in result.stderr and result.stdout == ''
    assert result.stderr.strip().count('\n') == 0 and 'reward model' in result.stderr


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
