"""CycleGAN (Zhu et al., ICCV 2017) in JAX/Flax: unpaired image-to-image translation."""
