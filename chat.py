"""Chat with any stage's checkpoint in the terminal; /reset forgets, /quit ends (README: "Chat").

  python chat.py                                    # chat with out/sft (made by python sft.py)
  python chat.py --ckpt=out/rlhf --temperature=0    # any stage's checkpoint; 0 = greedy
  python chat.py --prompt="Tell me where Mira lives."   # one answer on stdout, then exit
"""
import codecs
import os
import sys
import time
from functools import partial

from model import (answer_text, as_messages, configure, load_checkpoint, load_tokenizer, made_by,
                   newest_turns, prompt_tokens, setup, token_text)

# ----------------------------------------------------------------------------- config
ckpt = 'out/sft'          # a stage's directory (holding ckpt.pt) or the path of a .pt file
prompt = ''               # non-empty: answer this one prompt, print the answer and exit
max_new_tokens = 128
temperature = 0.8         # 0: greedy
top_k = 50                # sample among the top_k likeliest tokens; 0: among all
device = 'auto'           # 'auto', 'cpu', 'cuda', 'mps'
dtype = 'auto'            # 'auto', 'float32', 'bfloat16'
seed = 1337
# -----------------------------------------------------------------------------


def show(enc, utf8, rows, new):
    """generate's on_token: prints the text of the new token (utf8: this answer's decoder)."""
    print(token_text(enc, utf8, new[0].item()), end='', flush=True)


def reply(model, enc, messages, max_new_tokens, temperature, top_k, autocast):
    """The assistant's next turn: printed as it is sampled, then its speed on stderr; its text."""
    tokens, end = prompt_tokens(enc, messages), enc.encode_single_token('<|end|>')
    room = min(max_new_tokens, model.config.block_size - len(tokens))
    utf8, start = codecs.getincrementaldecoder('utf-8')(errors='replace'), time.perf_counter()
    with autocast:
        answer, lengths = model.generate([tokens], room, temperature, top_k or None, end,
                                         on_token=partial(show, enc, utf8))
    print(utf8.decode(b'', final=True), flush=True)  # (the row ends at <|end|>, which is not text)
    n = lengths[0].item()
    print(f'({n} tokens, {n / (time.perf_counter() - start):.0f} tok/s)', file=sys.stderr)
    return answer_text(enc, answer[0, :n].tolist())  # the text printed, piece by piece


def main():
    _, _, device, autocast = setup(configure(globals())['device'], dtype, seed)
    path = ckpt if ckpt.endswith('.pt') else os.path.join(ckpt, 'ckpt.pt')
    model, checkpoint = load_checkpoint(path, made_by(path), device, scalar_head=False)
    if checkpoint['model_args'].get('scalar_head'):
        sys.exit(f'error: {path} is a reward model: it scores answers, it does not write them; '
                 'chat with a policy such as out/sft or out/rlhf')
    model.eval()
    enc, block_size = load_tokenizer(checkpoint['tokenizer']), model.config.block_size
    if prompt:
        messages = newest_turns(enc, as_messages(prompt), block_size, max_new_tokens)
        if messages is None:
            sys.exit('error: the prompt is longer than the model reads '
                     f'(block_size={block_size} tokens)')
        return reply(model, enc, messages, max_new_tokens, temperature, top_k, autocast)
    print(f'{path} ({checkpoint.get("stage", "?")} stage, {model.num_params():,} parameters). '
          '/reset forgets the conversation, /quit ends it.')
    if checkpoint.get('stage') == 'pretrain':
        print('(a pretrained model has never seen a chat: expect it to ramble; '
              'python sft.py teaches it)')
    history, told = [], False
    while (line := input('> ').strip()) != '/quit':
        if line == '/reset':
            history = []
            print('(conversation forgotten)')
        if line in ('', '/reset'):
            continue
        messages = newest_turns(enc, history + [dict(role='user', content=line)], block_size,
                                max_new_tokens)
        if messages is None:
            print(f'(too long: the model reads at most {block_size} tokens; skipped)')
            continue
        if len(messages) <= len(history) and not told:
            told = True
            print('(the conversation no longer fits the model: dropping its oldest turns)')
        answer = reply(model, enc, messages, max_new_tokens, temperature, top_k, autocast)
        history = messages + [dict(role='assistant', content=answer)]


if __name__ == '__main__':
    try:
        main()
    except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C: leave quietly
        print()
