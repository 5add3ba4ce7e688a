"""Fixture genome: connects, then raises."""
from gpt import lab

run = lab.connect()
raise RuntimeError("genome exploded on purpose (fixture raises.py)")
