"""Long addition for masked diffusion: the task, its generator and the model recipe behind `emdm:addition`."""
