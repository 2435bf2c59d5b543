"""``mvq eval``: which metrics a tokenizer, its samples or a folder of images get, and the job
that computes them into ``eval.json``. Imports the metrics, data, tokenizers, priors and the
sampling pipeline."""
