"""Networks: the VAE (encoder + decoder), the PatchGAN critic and the perceptual loss."""
