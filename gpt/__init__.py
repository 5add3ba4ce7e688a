"""The trusted lab bench: data splits, tokenizer, the lab API genomes import, and scoring.

Nothing a genome does can change this package's behaviour: genomes talk to it only
through `gpt.lab`, and scoring runs in a separate process that never imports genome code.
"""
