# a fifth of the pairs held out: enough pairs to tell the RMs' accuracy from chance
eval_share = 0.2
judge_share = 0.4
