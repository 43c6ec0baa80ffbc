"""Stage two: GPT, LDM, DiT and SiT priors over tokenizer codes or latents."""
