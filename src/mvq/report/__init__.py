"""What a person looks at: figures of a trained tokenizer (``mvq viz``) and the static HTML
page of a run or a folder of runs (``mvq report``). Imports data, tokenizers and training's
run folders."""
