"""Stage one: quantizers, autoencoders, losses, codebook initialisation."""
