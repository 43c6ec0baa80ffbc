"""diffusers pipelines joining a tokenizer and a prior: `pipe(class_id=207)`."""
