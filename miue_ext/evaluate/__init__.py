"""Evaluation of poisons: train a victim on a poisoned set, test on clean data, under defenses.

    evaluation.evaluate_poison   the whole evaluation as a function
    train.train_victim           the victim's training loop
    defenses                     one small transform per defense (filters, batch mixes, PGD)
    report                       report folder (JSON, PNG, weights) and plots

`miue evaluate` and `miue plot` are miue_ext.commands.evaluate and miue_ext.commands.plot.
"""
