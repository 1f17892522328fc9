"""Training the response models: data, the training set, cores, readouts, losses, front ends, the ensemble, metrics."""
