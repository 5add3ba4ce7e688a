"""Operators make child genomes from parents. Every operator has the same shape:

    operator(parents: list[ParentInfo], rng: random.Random) -> Genome   # raises OperatorFailure

with `name` (journaled as the child's operator) and `arity` (1 = mutation, 2 = crossover).
The evolution loop registers them in a DEAP toolbox and never knows which one it got.
"""
