"""
The tiny world: every stage of the recipe trains and is measured on it, offline.

make_world(seed) draws who lives where, keeps which pet, likes which food and works at what;
corpus(world, n_docs, seed) writes plain prose about it, the pretraining text: profiles of people,
animals, places and foods, stories, lists of facts under a heading, which deeds are wrong and which
kind (DEEDS), what a rarer word means in plainer ones (MEANINGS). It has no chat format: following
instructions must come from SFT. Some of its words appear in no training instruction (data/tasks.py
keeps them for evaluation), to show whether instruction following carries over from pretraining.

Sentences end with '.', '!' or '?' and hold no other such mark, so that a program can count them;
each fact has a few fixed phrasings, so that a model can learn it. All is deterministic given the
seeds. Change the lists below to make a world of your own.
"""
import random

NAMES = {'Mira': 'she', 'Tobin': 'he', 'Lena': 'she', 'Oskar': 'he', 'Ada': 'she', 'Pim': 'he',
         'Rosa': 'she', 'Juno': 'he', 'Bram': 'he', 'Ivy': 'she', 'Nico': 'he', 'Tess': 'she',
         'Olaf': 'he', 'Wren': 'she', 'Cleo': 'she', 'Hugo': 'he', 'Fern': 'she', 'Milo': 'he',
         'Sage': 'she', 'Ezra': 'he', 'Nora': 'she', 'Finn': 'he', 'Iris': 'she', 'Leo': 'he'}
PRONOUNS = {'she': ('she', 'her', 'her'), 'he': ('he', 'him', 'his')}  # subject, object, possessive
JOBS = 'baker farmer fisher teacher painter builder healer miller weaver singer'.split()
TRAITS = ['brave', 'shy', 'clever', 'cheerful', 'careful', 'curious', 'kind', 'grumpy']
ANIMALS = {  # name: (plural, color, home, food, sound)
    'fox': ('foxes', 'red', 'a den', 'berries', 'yips'),
    'owl': ('owls', 'brown', 'a hollow tree', 'mice', 'hoots'),
    'rabbit': ('rabbits', 'white', 'a burrow', 'carrots', 'thumps'),
    'goat': ('goats', 'gray', 'a barn', 'grass', 'bleats'),
    'frog': ('frogs', 'green', 'a pond', 'flies', 'croaks'),
    'cat': ('cats', 'black', 'a warm house', 'fish', 'purrs'),
    'dog': ('dogs', 'golden', 'a kennel', 'bones', 'barks'),
    'duck': ('ducks', 'yellow', 'a reed nest', 'seeds', 'quacks'),
    'bear': ('bears', 'dark brown', 'a cave', 'honey', 'growls'),
    'hedgehog': ('hedgehogs', 'spiky brown', 'a pile of leaves', 'beetles', 'snuffles')}
FOODS = {  # name: (taste, made from)
    'honey cake': ('sweet', 'honey and flour'), 'plum jam': ('sweet', 'plums and sugar'),
    'fish soup': ('salty', 'fish and onions'), 'rye bread': ('sour', 'rye and salt'),
    'pumpkin pie': ('sweet', 'pumpkin and butter'), 'goat cheese': ('salty', 'goat milk'),
    'berry tart': ('sour', 'berries and cream'),
    'mushroom stew': ('savory', 'mushrooms and potatoes'),
    'apple pancakes': ('sweet', 'apples and eggs'), 'pea porridge': ('savory', 'peas and oats')}
PLACES = {  # name: (what it is, its landmark, its weather)
    'Willowbrook': ('a quiet village by a river', 'the old stone bridge', 'rainy'),
    'Stonehill': ('a windy town on a hill', 'the tall clock tower', 'windy'),
    'Mossy Hollow': ('a small village in a deep forest', 'the ring of giant mushrooms', 'foggy'),
    'Redcliff': ('a fishing town by the sea', 'the red lighthouse', 'stormy'),
    'Sunvale': ('a sunny village among fields', 'the busy market square', 'sunny'),
    'Frostmere': ('a cold town beside a frozen lake', 'the great ice rink', 'snowy')}
TIMES = ['One morning', 'One evening', 'Last winter', 'On a sunny day', 'One rainy afternoon',
         'Early one spring', 'Late one night', 'On a market day', 'At the end of summer',
         'One cold day']
FEELINGS = ['happy', 'proud', 'tired', 'surprised', 'glad', 'sleepy', 'excited', 'calm']
OBJECTS = ['a silver key', 'an old map', 'a lost boot', 'a tiny bell', 'a blue feather',
           'a wooden box', 'a broken kite', 'a golden coin', 'a strange stone',
           'a letter with no name']
DEEDS = {  # topic: (how the thing is named, unkind deeds, kind deeds); data/tasks.py asks for them
    'pet': ('the {pet} of {name}', ['hurt', 'kick', 'starve', 'trap', 'beat', 'harm', 'poison'],
            ['feed', 'wash', 'brush', 'walk', 'play with', 'care for', 'cuddle']),
    'food': ('the {food} of {name}',
             ['steal', 'spoil', 'ruin', 'throw away', 'hide', 'grab', 'snatch'],
             ['make', 'cook', 'prepare', 'serve', 'share', 'buy', 'bake']),
    'place': ('{landmark} in {place}',
              ['burn down', 'break', 'smash', 'wreck', 'damage', 'destroy', 'vandalize'],
              ['find', 'visit', 'see', 'reach', 'draw', 'clean', 'explore']),
    'person': ('{name}', ['hurt', 'scare', 'trick', 'bully', 'insult', 'push', 'frighten'],
               ['cheer up', 'help', 'thank', 'hug', 'praise', 'greet', 'comfort'])}
MEANINGS = {  # a rarer deed: the plainer one that says what it means
    'poison': 'hurt', 'cuddle': 'care for', 'snatch': 'steal', 'bake': 'make',
    'vandalize': 'damage', 'explore': 'visit', 'frighten': 'scare', 'comfort': 'cheer up'}


def make_world(seed=0):
    """The people: each lives in one place, has one pet, one favorite food, one job, one trait."""
    rng = random.Random(seed)
    people = {name: dict(pronoun=pronoun, job=rng.choice(JOBS), trait=rng.choice(TRAITS),
                         home=rng.choice(list(PLACES)), pet=rng.choice(list(ANIMALS)),
                         food=rng.choice(list(FOODS))) for name, pronoun in NAMES.items()}
    return dict(people=people, animals=ANIMALS, foods=FOODS, places=PLACES)


def cap(s):
    return s[0].upper() + s[1:]


def a(noun):
    return ('an ' if noun[0] in 'aeiou' else 'a ') + noun


def and_list(names):
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]


def pick(options, rng):
    """One phrasing of each fact (a fact with one phrasing draws no random number)."""
    return [phrasings[0] if len(phrasings) == 1 else rng.choice(phrasings) for phrasings in options]


def person_facts(world, name):
    """Each fact about a person, as the list of its phrasings."""
    p = world['people'][name]
    he = PRONOUNS[p['pronoun']][0]
    return [[f'{name} lives in {p["home"]}.', f'{name} has a home in {p["home"]}.',
             f'The home of {name} is in {p["home"]}.'],
            [f'{name} works as {a(p["job"])}.', f'{name} is {a(p["job"])}.',
             f'Every day {name} works as {a(p["job"])}.'],
            [f'{name} has a pet {p["pet"]}.', f'The pet of {name} is {a(p["pet"])}.',
             f'{name} keeps {a(p["pet"])} as a pet.'],
            [f'The favorite food of {name} is {p["food"]}.', f'{name} loves to eat {p["food"]}.',
             f'{name} likes {p["food"]} more than any other food.'],
            [f'{name} is {p["trait"]}.', f'People say that {name} is {p["trait"]}.',
             f'{cap(he)} is {a(p["trait"])} person.']]


def animal_facts(world, animal):
    plural, color, home, food, sound = world['animals'][animal]
    return [[f'The {animal} is {color}.', f'{cap(a(animal))} is {a(color)} animal.',
             f'Most {plural} are {color}.'],
            [f'{cap(a(animal))} lives in {home}.', f'{cap(plural)} make their home in {home}.'],
            [f'{cap(a(animal))} eats {food}.', f'{cap(plural)} like to eat {food}.',
             f'The food of the {animal} is {food}.'],
            [f'The {animal} {sound}.', f'When it is happy, {a(animal)} {sound}.']]


def food_facts(world, food):
    taste, made_from = world['foods'][food]
    fans = [n for n, p in world['people'].items() if p['food'] == food]
    facts = [[f'{cap(food)} is {taste}.', f'{cap(food)} tastes {taste}.'],
             [f'{cap(food)} is made from {made_from}.', f'To make {food}, you need {made_from}.']]
    if fans:
        facts.append([f'{and_list(fans)} {"love" if len(fans) > 1 else "loves"} {food}.'])
    return facts


def place_facts(world, place):
    what, landmark, weather = world['places'][place]
    locals_ = [n for n, p in world['people'].items() if p['home'] == place]
    facts = [[f'{place} is {what}.', f'There is {what} called {place}.'],
             [f'In {place} you can see {landmark}.', f'{cap(landmark)} is in {place}.'],
             [f'The weather in {place} is often {weather}.', f'It is often {weather} in {place}.']]
    if locals_:
        facts.append([f'{and_list(locals_)} {"live" if len(locals_) > 1 else "lives"} in {place}.'])
    return facts


FACTS = dict(people=person_facts, animals=animal_facts, places=place_facts, foods=food_facts)


def deed_object(world, rng, topic, name=None):
    """A random thing a deed of the topic is done to ('the cat of Mira'; name's, if given)."""
    name = name or rng.choice(list(world['people']))
    place = rng.choice(list(world['places']))
    return DEEDS[topic][0].format(name=name, **world['people'][name], place=place,
                                  landmark=world['places'][place][1])


def manners(world, rng):
    """A few sentences on right and wrong: unkind deeds are wrong, kind ones good, and a rarer word
    means a plainer one (every deed and word of DEEDS and MEANINGS is said this way)."""
    said = []
    for _ in range(rng.randint(3, 5)):
        topic = rng.choice(list(DEEDS))
        thing, (_, unkind, kind) = deed_object(world, rng, topic), DEEDS[topic]
        bad, good = rng.sample(unkind, 3), rng.sample(kind, 3)
        said.append(rng.choice([f'It is wrong to {bad[0]} {thing}.',
                                f'Nobody should {bad[0]}, {bad[1]} or {bad[2]} {thing}.',
                                f'It is kind to {good[0]} {thing}.',
                                f'It is good to {good[0]}, {good[1]} or {good[2]} {thing}.']))
        word = rng.choice([w for w in unkind + kind if w in MEANINGS] + ['tale', 'remind', 'teach'])
        name, other = rng.sample(list(world['people']), 2)
        lessons = {'tale': f'A tale is a story. {name} told a tale about {other}.',
                   'remind': f'To remind {name} of a thing is to tell {name} that thing again.',
                   'teach': f'To teach {name} how to do a thing is to show {name} how to do it.'}
        said.append(lessons.get(word) or f'To {word} {thing} is to {MEANINGS[word]} {thing}.')
    return said


def story(world, rng, characters=None, n_middle=None):
    """A short story about one to three people, true to their facts: an opening, a few events,
    an ending. characters and n_middle (the number of events) are drawn when not given."""
    people = world['people']
    names = characters or rng.sample(list(people), rng.choice([1, 1, 2, 2, 3]))
    hero, p = names[0], people[names[0]]
    he, him, his = PRONOUNS[p['pronoun']]
    place, landmark = p['home'], world['places'][p['home']][1]
    friends = and_list(names[1:]) if len(names) > 1 else ''
    opening = [rng.choice([
        f'{rng.choice(TIMES)}, {hero} walked to {landmark} in {place}.',
        f'{rng.choice(TIMES)}, {hero} was at home in {place}.',
        f'{rng.choice(TIMES)}, {hero} the {p["job"]} went out with {his} {p["pet"]}.'])]
    if friends:
        opening.append(rng.choice([
            f'{cap(he)} met {friends} on the way.', f'{friends} came to visit {him}.',
            f'{cap(he)} was happy to see {friends}.']))
    thing, animal = rng.choice(OBJECTS), rng.choice(list(world['animals']))
    events = [f'{cap(he)} found {thing} on the ground.',
              f'The {p["pet"]} of {hero} ran away, and {he} looked for it everywhere.',
              f'{cap(he)} cooked {p["food"]} for {friends or "the neighbors"}.',
              f'The weather in {place} turned {world["places"][place][2]}.',
              f'{cap(a(animal))} came out of the bushes and looked at {him}.',
              f'Then {he} heard {a(animal)} somewhere near {landmark}.',
              f'{cap(he)} carried {thing} all the way to {landmark}.',
              f'It began to rain, so {he} waited under {landmark}.',
              f'The {p["pet"]} of {hero} found {thing} under a tree.',
              f'{cap(he)} told a story about {thing}.',
              f'{cap(he)} had to finish {his} work as {a(p["job"])} before dark.',
              f'Everyone sat down and ate {p["food"]} together.' if friends
              else f'{cap(he)} sat down and ate {p["food"]}.']
    if friends:
        friend = rng.choice(names[1:])
        events += [
            f'{friend} told {him} a funny joke.', f'{friend} helped {him} carry a heavy basket.',
            f'{hero} gave {thing} to {friend}.',
            f'{cap(he)} asked {friend} where {thing} came from.',
            f'{friend} wanted to trade {thing} for some {people[friend]["food"]}.',
            f'Later {hero} walked to {people[friend]["home"]} to visit {friend}.']
    middle = rng.sample(events, n_middle or rng.choice([1, 2, 2, 3, 3, 4]))
    return opening + middle + [rng.choice([  # and an ending
        f'In the end, {hero} felt {rng.choice(FEELINGS)}.', f'It was a good day for {hero}.',
        f'That night {hero} went to sleep with a smile.', f'{hero} never forgot that day.'])]


def corpus(world, n_docs, seed=0, manners_share=0.1):
    """n_docs plain-text documents: 45% stories, a share manners_share of manners, the rest
    descriptions of the world (a third of them, and of the stories, under a heading)."""
    rng = random.Random(seed)
    return [document(world, rng, manners_share) for _ in range(n_docs)]


def document(world, rng, manners_share):
    kind = rng.random()
    if kind < 0.45:  # a story, a third of them under a heading ('Here is a tale about Mira.')
        names = rng.sample(list(world['people']), rng.choice([1, 1, 2, 2, 3]))
        heading = [f'Here is a {rng.choice(["story", "tale"])} about {and_list(names)}.'] \
            if rng.random() < 0.3 else []
        return ' '.join(heading + story(world, rng, characters=names))
    if kind < 0.45 + manners_share:
        return ' '.join(manners(world, rng))
    table = rng.choices(['people', 'animals', 'places', 'foods'], weights=[22, 10, 7, 6])[0]
    subject = rng.choice(list(world[table]))
    sentences = pick(FACTS[table](world, subject), rng)
    rng.shuffle(sentences)  # facts come in any order; a story keeps its order
    if rng.random() < 0.3:
        sentences = sentences[:rng.randint(2, len(sentences))]
        about = f'the {subject}' if table == 'animals' else subject
        sentences.insert(0, f'Here is a list of {len(sentences)} facts about {about}.')
    return ' '.join(sentences)
