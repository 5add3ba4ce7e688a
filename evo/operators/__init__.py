"""Operators make child genomes from parents. Every operator has the same shape:

    operator(parents: list[ParentInfo], rng: random.Random, context: OperatorContext | None) -> Genome

(raises OperatorFailure) with `name` (journaled as the child's operator) and `arity` (1 = mutation,
2 = crossover). The breeder registers them in a DEAP toolbox and never knows which one it got.
"""
