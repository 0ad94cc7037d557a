import re

from data import world


def test_world_and_corpus_are_deterministic():
    assert world.make_world(3) == world.make_world(3)
    assert world.make_world(3) != world.make_world(4)
    w = world.make_world(0)
    assert world.corpus(w, 200, seed=1) == world.corpus(w, 200, seed=1)
    assert world.corpus(w, 200, seed=1) != world.corpus(w, 200, seed=2)


def test_corpus_sentences_are_countable_and_facts_consistent():
    w = world.make_world(0)
    docs = world.corpus(w, 2000, seed=0)
    sentences = [s for d in docs for s in re.split(r'(?<=[.!?]) ', d)]
    assert all(s[0].isupper() and s[-1] in '.!?' and not re.search(r'[.!?]', s[:-1]) for s in sentences)
    assert len(set(sentences)) > 2000  # variety, not a short list repeated
    for name, person in w['people'].items():  # every statement of a home is the true one
        for place in world.PLACES:
            if f'{name} lives in {place}.' in sentences:
                assert place == person['home']


def test_story_mentions_its_characters():
    w = world.make_world(0)
    import random
    sentences = world.story(w, random.Random(0), characters=['Mira', 'Leo', 'Ada'], n_middle=3)
    text = ' '.join(sentences)
    assert all(name in text for name in ('Mira', 'Leo', 'Ada'))
    assert len(sentences) == 1 + 1 + 3 + 1  # opening, meeting, three events, ending
