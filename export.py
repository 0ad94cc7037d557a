"""Export a policy to the Hugging Face format: a plain LlamaForCausalLM folder (weights, tokenizer,
chat template) that transformers loads with no custom code. README: "Use your model elsewhere".

  pip install safetensors transformers          # only export needs them (transformers: to load it)
  python export.py --ckpt=out/rlhf --out=out/hf/rlhf
"""
import json
import os
import shutil
import sys
import tempfile

import torch

from model import configure, load_checkpoint, load_tokenizer

# ----------------------------------------------------------------------------- config
ckpt = 'out/rlhf'         # a stage's directory (holding ckpt.pt) or the path of a .pt file
out = 'out/hf/rlhf'       # the folder to write (a previous export there is replaced)
# -----------------------------------------------------------------------------

# model.render_chat's template in Jinja, for HF's apply_chat_template (one difference: a message
# that spells a special token, '<|end|>', gets that token here; render_chat encodes it as text)
CHAT_TEMPLATE = (
    "{{ '<|endoftext|>' }}"
    "{% for m in messages %}"
    "{% if m['role'] not in ('user', 'assistant') %}"
    "{{ raise_exception('roles are user and assistant') }}{% endif %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def hf_rotary_order(w, n_head):
    """Rows of q or k reordered per head, even rows then odd: HF's Llama turns the pairs (x[i],
    x[i + head_dim/2]) where model.rotate turns (x[2i], x[2i+1]); as q and k alike, q.k stays."""
    return w.view(n_head, -1, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def llama_weights(state, cfg):
    """The project's state dict under LlamaForCausalLM's names. lm_head is tied to the embedding:
    HF ties it again on loading (tie_word_embeddings), so it is stored once."""
    weights = {'model.embed_tokens.weight': state['wte.weight'],
               'model.norm.weight': state['norm.weight']}
    for i in range(cfg.n_layer):
        ours, theirs = f'blocks.{i}.', f'model.layers.{i}.'
        q, k, v = state[ours + 'attn.qkv.weight'].split(cfg.n_embd, dim=0)  # rows q, k, v
        weights.update({
            theirs + 'self_attn.q_proj.weight': hf_rotary_order(q, cfg.n_head),
            theirs + 'self_attn.k_proj.weight': hf_rotary_order(k, cfg.n_head),
            theirs + 'self_attn.v_proj.weight': v,
            theirs + 'self_attn.o_proj.weight': state[ours + 'attn.proj.weight'],
            theirs + 'mlp.gate_proj.weight': state[ours + 'mlp.gate.weight'],
            theirs + 'mlp.up_proj.weight': state[ours + 'mlp.up.weight'],
            theirs + 'mlp.down_proj.weight': state[ours + 'mlp.down.weight'],
            theirs + 'input_layernorm.weight': state[ours + 'norm1.weight'],
            theirs + 'post_attention_layernorm.weight': state[ours + 'norm2.weight']})
    return {name: w.float().contiguous() for name, w in weights.items()}


def llama_config(cfg, hidden, special_ids):
    """config.json: LlamaConfig's fields (hidden: the SwiGLU's width; special_ids: bos/eos/pad)."""
    return dict(
        architectures=['LlamaForCausalLM'], model_type='llama', torch_dtype='float32',
        vocab_size=cfg.vocab_size,  # the model's (rounded up) vocab; the tokenizer uses the first
        hidden_size=cfg.n_embd, intermediate_size=hidden, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        head_dim=cfg.n_embd // cfg.n_head, max_position_embeddings=cfg.block_size,
        hidden_act='silu', rope_theta=10000.0, rope_scaling=None,  # model.GPT's rotary base
        rms_norm_eps=torch.finfo(torch.float32).eps,  # nn.RMSNorm's default in fp32
        attention_bias=False, mlp_bias=False, tie_word_embeddings=True, initializer_range=0.02,
        **special_ids)


def byte_chars():
    """GPT-2's stand-in for each byte, the alphabet of byte-level BPE files: a printable byte is
    itself, the others (space, control bytes, ...) the characters from 256 on (space is 'Ġ')."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # ! to ~, ¡ to ¬, ® to ÿ
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def tokenizer_json(enc):
    """The tokenizer in the `tokenizers` library's format, with the merges tiktoken's ranks imply:
    tiktoken merges any adjacent pair that makes a token, lowest rank first, so the merges are all
    splits of a token into two tokens, by its rank; ignore_merges takes a whole token as it is."""
    ranks, chars = enc._mergeable_ranks, byte_chars()
    text = {token: ''.join(chars[b] for b in token) for token in ranks}
    # (merged token's rank, left part's rank, 'left right' in GPT-2's characters), sorted below
    merges = [(rank, ranks[token[:i]], text[token[:i]] + ' ' + text[token[i:]])
              for token, rank in ranks.items() for i in range(1, len(token))
              if token[:i] in ranks and token[i:] in ranks]
    return dict(
        version='1.0', truncation=None, padding=None, normalizer=None, post_processor=None,
        added_tokens=[dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False,
                           normalized=False, special=True) for s, i in enc._special_tokens.items()],
        pre_tokenizer=dict(type='Sequence', pretokenizers=[  # the pattern, then bytes -> chars
            dict(type='Split', pattern=dict(Regex=enc._pat_str), behavior='Isolated', invert=False),
            dict(type='ByteLevel', add_prefix_space=False, trim_offsets=False, use_regex=False)]),
        decoder=dict(type='ByteLevel', add_prefix_space=False, trim_offsets=False, use_regex=False),
        model=dict(type='BPE', dropout=None, unk_token=None, continuing_subword_prefix=None,
                   end_of_word_suffix=None, fuse_unk=False, byte_fallback=False, ignore_merges=True,
                   vocab={text[token]: rank for token, rank in ranks.items()},
                   merges=[pair for _, _, pair in sorted(merges)]))


def write_json(folder, name, obj):
    with open(os.path.join(folder, name), 'w') as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


def main():
    configure(globals())
    try:
        from safetensors.torch import save_file
    except ImportError:
        sys.exit('error: export.py needs safetensors: pip install safetensors transformers')
    if os.path.exists(out) and not os.path.isfile(os.path.join(out, 'model.safetensors')):
        sys.exit(f'error: {out} exists and is not an earlier export: choose another --out')
    path = ckpt if ckpt.endswith('.pt') else os.path.join(ckpt, 'ckpt.pt')
    model, checkpoint = load_checkpoint(path, 'a training stage (python sft.py, rlhf.py, ...)')
    cfg = model.config
    if cfg.scalar_head:
        sys.exit(f'error: {path} is a reward or value model (a scalar head): export.py exports '
                 'policies (pretrain, sft, rlhf, bestofk), as HF has no model with the same '
                 'scalar head')
    enc = load_tokenizer(checkpoint['tokenizer'])
    bos, end = (enc.encode_single_token(s) for s in ('<|endoftext|>', '<|end|>'))
    # padding is <|end|>, not <|endoftext|>: HF's generate, given no attention mask, masks every pad
    # id it finds in the prompt unless pad is eos, and every prompt starts with <|endoftext|>
    special_ids = dict(bos_token_id=bos, eos_token_id=end, pad_token_id=end)

    # all goes to a temporary folder beside `out`, renamed at the end: a failed export leaves none
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(out) + '.tmp')
    try:
        save_file(llama_weights(model.state_dict(), cfg), os.path.join(tmp, 'model.safetensors'),
                  metadata=dict(format='pt'))
        os.chmod(tmp, 0o755)  # readable by all, as a folder made with mkdir is
        os.chmod(os.path.join(tmp, 'model.safetensors'), 0o644)
        hidden = model.blocks[0].mlp.up.out_features
        write_json(tmp, 'config.json', llama_config(cfg, hidden, special_ids))
        write_json(tmp, 'generation_config.json', special_ids)
        write_json(tmp, 'tokenizer.json', tokenizer_json(enc))
        write_json(tmp, 'tokenizer_config.json', dict(
            tokenizer_class='PreTrainedTokenizerFast',  # generic: reads tokenizer.json as it is
            bos_token='<|endoftext|>', eos_token='<|end|>', pad_token='<|end|>',
            padding_side='left',
            add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False,
            model_input_names=['input_ids', 'attention_mask'],  # (generate refuses token_type_ids)
            model_max_length=cfg.block_size, chat_template=CHAT_TEMPLATE))
        if os.path.exists(out):  # an earlier export: replaced only now that the new one is complete
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stage = checkpoint.get('stage', '?')
    print(f'{path} ({stage} stage, {model.num_params():,} parameters) -> {out}')


if __name__ == '__main__':
    main()
