"""Runs made of runs: ``mvq sweep`` (a resumable grid of train -> encode -> prior -> eval cells
and its tables) and ``mvq demo``. Imports the training jobs, eval and report; nothing imports
it but the command line."""
