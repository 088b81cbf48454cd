"""Independent brute-force computations for tests: plain Python loops over every preference vector,
written without the package's inference code (only the domains' declared feature tables are read)."""
import itertools
import math

LEVELS = (-1.0, -0.5, 0.0, 0.5, 1.0)
TOLERANCE = 1e-6


def weight_vectors(n_features):
    """Every weight vector with prior mass (all-zero excluded), in the package's hypothesis order."""
    return [w for w in itertools.product(LEVELS, repeat=n_features) if any(w)]


def option_values(domain, option_rows):
    return [[domain.features[f].normalised[int(i)] for f, i in enumerate(row)] for row in option_rows]


def choice_probs(weights, values, temperature=0.0, lapse=0.0):
    """p(choose each option) for a linear user with these weights."""
    utilities = [sum(w * x for w, x in zip(weights, option)) for option in values]
    if temperature > 0:
        top = max(utilities)
        exps = [math.exp((u - top) / temperature) for u in utilities]
        probs = [e / sum(exps) for e in exps]
    else:
        best = max(utilities)
        tied = [u >= best - TOLERANCE for u in utilities]
        probs = [t / sum(tied) for t in tied]
    n = len(values)
    return [(1 - lapse) * p + lapse / n for p in probs]


def posterior(domain, option_index, choices, temperature=0.0, lapse=0.0):
    """{weights: probability} after all the rounds of one dialogue (option_index [R, O, F])."""
    weights_list = weight_vectors(len(domain.features))
    unnormalised = {}
    for weights in weights_list:
        p = 1.0
        for rows, choice in zip(option_index.tolist(), choices.tolist()):
            p *= choice_probs(weights, option_values(domain, rows), temperature, lapse)[choice]
        unnormalised[weights] = p
    total = sum(unnormalised.values())
    return {w: p / total for w, p in unnormalised.items()}


def predictive(domain, post, option_rows, temperature=0.0, lapse=0.0):
    values = option_values(domain, option_rows)
    out = [0.0] * len(values)
    for weights, p in post.items():
        for o, q in enumerate(choice_probs(weights, values, temperature, lapse)):
            out[o] += p * q
    return out


def entropy(probs):
    """-sum p log p in nats (0 log 0 = 0)."""
    return -sum(p * math.log(p) for p in probs if p > 0)


def information_gain(post, choice_table):
    """The mutual information between the next choice and the preferences, by its definition:
    ``post`` {key: p(key | history)}, ``choice_table`` {key: [p(choose option o | key)]}.
    I = H[sum_key p(key) p(. | key)] - sum_key p(key) H[p(. | key)]."""
    n_options = len(next(iter(choice_table.values())))
    predictive = [sum(p * choice_table[key][o] for key, p in post.items()) for o in range(n_options)]
    return entropy(predictive) - sum(p * entropy(choice_table[key]) for key, p in post.items())


def linear_information_gain(domain, post, option_rows, temperature=0.0, lapse=0.0):
    """The information gain of one option set (rows [O, F]) for a linear domain's posterior {weights: p}."""
    values = option_values(domain, option_rows)
    return information_gain(post, {w: choice_probs(w, values, temperature, lapse) for w in post})
