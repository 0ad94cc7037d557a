"""
The JSONL files the chain passes along (demonstrations, rankings, prompts, answers): read with one
clear error for a bad line, written atomically.
"""
import json
import os
import sys


def read_jsonl(paths, check, expected):
    """The rows of comma-separated JSONL files. check(row) returns '' or what is wrong with the
    row; a wrong row, or a line that is not UTF-8 JSON of the expected form, stops the script with
    one error naming the file and line."""
    rows = []
    for path in filter(None, paths.split(',')):
        if not os.path.isfile(path):
            sys.exit(f'error: {path} not found')
        with open(path, 'rb') as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode('utf-8'))
                    problem = check(row)
                except UnicodeDecodeError:
                    problem = 'not UTF-8 text'
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    problem = f'expected a JSON object {expected}'
                if problem:
                    sys.exit(f'error: {path}:{number}: {problem}')
                rows.append(row)
    return rows


def write_jsonl(path, rows):
    """Writes rows as JSONL, to path.tmp first: a kill leaves the old file or the new."""
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + '\n' for row in rows)
    os.replace(path + '.tmp', path)


def is_ranking(row):
    """'' for a well-formed ranking, else what is wrong with it."""
    prompt, answers = row['prompt'], row['answers']
    messages = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and m.get('role') in ('user', 'assistant')
        and isinstance(m.get('content'), str) for m in prompt)
    if not (isinstance(prompt, str) and prompt.strip()) and not messages:
        return '"prompt" must be text or a list of messages'
    if not isinstance(answers, list) or len(answers) < 2 or any(type(a) is not str for a in answers):
        return '"answers" must be a list of at least 2 texts'
    return '' if all(a.strip() for a in answers) else 'an answer is empty'


def read_rankings(paths):
    """Rankings (reward.py writes them, data/hh_rlhf.py too), one prompt per line, answers best
    first: {"prompt": text or [messages], "answers": ["best", ..., "worst"]}."""
    return read_jsonl(paths, is_ranking, '{"prompt": ..., "answers": [best, ..., worst]}')
