"""lcgen: large-codebook image tokenizers (VQGAN-LC, CVQ-VAE, LooC and their baselines) and the
GPT, LDM, DiT and SiT priors that generate with them, as diffusers pipelines.

Layers, lowest first; a module imports only from its own layer or the ones below it:
1. foundations: `lcgen.data`, `lcgen.training`, `lcgen.configs`, `lcgen.log`, `lcgen.cpu_linear`, the metrics
   `lcgen.eval.metrics` / `lcgen.eval.fid` (tensors in, numbers out);
2. `lcgen.tokenizer`: quantizers, autoencoders, losses;
3. `lcgen.priors`: GPT, LDM, DiT, SiT models and their objectives;
4. `lcgen.pipelines`: a tokenizer + a prior behind `pipe(class_id=207)`;
5. runners and entry points: the training loops (`lcgen.tokenizer.train`, `lcgen.priors.train`),
   extraction, codebook initialisation, the evaluation runners in `lcgen.eval`, `lcgen.cli`, `lcgen.demo`.
`tests/test_layers.py` holds the exact table and checks it.
"""
__version__ = "0.1.0"
